"""The A1111 infotext shared by the PNG metadata and the A1111 API."""

from protocol.infotext import A1111_SAMPLER_NAMES, infotext
from protocol.messages import SCHEDULERS, GenerationParams


def test_infotext_is_a1111s_layout_with_token_merging_only_when_used():
    p = GenerationParams(prompt="a cat", seed=7, negative_prompt="blurry", steps=20, guidance_scale=7.5,
                         width=512, height=768)
    assert infotext(p, 7, "sd-v1-4", "Euler a") == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 512x768, Model: sd-v1-4")
    merged = GenerationParams(prompt="a cat", seed=7, token_merging=0.5, scheduler="euler")
    assert infotext(merged, 8, "m").splitlines() == [
        "a cat", "Steps: 25, Sampler: Euler, CFG scale: 7.5, Seed: 8, Size: 512x512, Model: m, Token merging ratio: 0.5"]


def test_every_scheduler_is_shown_by_its_a1111_name_never_ours():
    assert set(A1111_SAMPLER_NAMES) == set(SCHEDULERS)
    default = GenerationParams(prompt="a cat", seed=1)
    assert "Sampler: PNDM," in infotext(default, 1, "m")
    assert "Sampler: DPM++ 2M Karras," in infotext(GenerationParams(prompt="a", seed=1, scheduler="dpmpp_2m_karras"),
                                                   1, "m")


def test_image_to_image_says_its_denoising_strength_as_a1111_does():
    p = GenerationParams(prompt="a cat", seed=1, mode="img2img", strength=0.5)
    assert "Denoising strength: 0.5" in infotext(p, 1, "m")
    assert "Denoising strength" not in infotext(GenerationParams(prompt="a cat", seed=1), 1, "m")
