"""The A1111 infotext shared by the PNG metadata and the A1111 API."""

from protocol.infotext import infotext
from protocol.messages import GenerationParams


def test_infotext_is_a1111s_layout_with_token_merging_only_when_used():
    p = GenerationParams(prompt="a cat", seed=7, negative_prompt="blurry", steps=20, guidance_scale=7.5,
                         width=512, height=768)
    assert infotext(p, 7, "Euler a", "sd-v1-4") == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 512x768, Model: sd-v1-4")
    merged = GenerationParams(prompt="a cat", seed=7, token_merging=0.5)
    assert infotext(merged, 8, "euler", "m").splitlines() == [
        "a cat", "Steps: 25, Sampler: euler, CFG scale: 7.5, Seed: 8, Size: 512x512, Model: m, Token merging ratio: 0.5"]
