"""Emphasis and long prompts on the real engine, on the tiny SD and SDXL pipelines: a prompt with unit
weights makes the very image diffusers' own encoding makes (so the chunk encoding is diffusers' for
both families, pooled embeddings and SDXL's empty negative included); weights, BREAK and the tokens past
the 77th change the image; chunks cut where A1111 cuts them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.prompt_weighting import CHUNK, chunks, needs_weighting, weighted_embeddings  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402

pytestmark = pytest.mark.slow
LONG = "a cat sitting on a mat in the sun, " * 4  # the tiny tokenizer's tokens are characters: 140 of them


@pytest.fixture(scope="module", params=["tiny", "tiny-sdxl"])
def pipe(request, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return DiffusersPipeline.load(ModelServerSettings(model=request.param, cache_dir=str(cache), dtype="float32"))


def make(pipe, prompt, negative=""):
    p = GenerationParams(prompt=prompt, negative_prompt=negative, seed=3, steps=3, width=64, height=64)
    with torch.inference_mode():
        assert all(torch.isfinite(v).all() for v in weighted_embeddings(pipe.pipe, prompt, negative).values())
    return np.asarray(pipe.generate(p, p.seed, lambda *a: None, lambda: None), dtype=np.float32)


@pytest.mark.parametrize("plain, weighted, negative", [("a cat", "(a cat:1)", ""), ("a cat", "a cat", "(dog:1)"),
                                                       ("a cat", "(a cat:1)", "a dog")])
def test_unit_weights_make_the_image_diffusers_own_encoding_makes(pipe, plain, weighted, negative):
    assert not needs_weighting(pipe.pipe, plain, negative.replace("(", "").replace(":1)", ""))
    assert needs_weighting(pipe.pipe, weighted, negative)
    assert np.array_equal(make(pipe, plain, negative.replace("(", "").replace(":1)", "")),
                          make(pipe, weighted, negative))


def test_weights_break_and_the_tokens_past_the_77th_change_the_image(pipe):
    base = make(pipe, "a cat on a mat")
    assert np.abs(make(pipe, "a (cat:1.5) on a mat") - base).mean() > 0.01
    assert np.abs(make(pipe, "a [cat] on a mat") - base).mean() > 0.01
    assert np.abs(make(pipe, "a cat BREAK on a mat") - base).mean() > 0.01
    assert needs_weighting(pipe.pipe, LONG, "")
    assert np.abs(make(pipe, LONG) - make(pipe, LONG[:CHUNK])).mean() > 0.01  # what diffusers would keep


def test_prompt_and_negative_are_padded_to_the_same_chunks_and_sdxl_keeps_its_pooled_one(pipe):
    with torch.inference_mode():
        out = weighted_embeddings(pipe.pipe, LONG, "blurry")
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape
    assert out["prompt_embeds"].shape[1] == 77 * 2
    if hasattr(pipe.pipe, "text_encoder_2"):
        assert out["pooled_prompt_embeds"].ndim == 2 and out["negative_pooled_prompt_embeds"].shape == \
            out["pooled_prompt_embeds"].shape
        with torch.inference_mode():
            empty = weighted_embeddings(pipe.pipe, LONG, "")
        assert not empty["negative_prompt_embeds"].any()  # SDXL's rule: an empty negative is zeros


def test_chunks_are_cut_at_a_recent_comma_and_at_break(pipe):
    tokenizer = pipe.pipe.tokenizer
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    words = "x" * 70 + ",yyyyyyyyyy"  # a comma at token 70: the chunk ends there, the rest starts the next
    found = chunks(tokenizer, words)
    assert [len(c) for c in found] == [71, 10] and found[0][-1][0] == comma
    far = "x" * 40 + "," + "y" * 60  # a comma 35 tokens back is too far: cut at 75
    assert [len(c) for c in chunks(tokenizer, far)] == [75, 26]
    assert [len(c) for c in chunks(tokenizer, "ab BREAK cd")] == [2, 2]
    assert [w for _, w in chunks(tokenizer, "a(b:2)")[0]] == [1.0, 2.0]


def test_a_weighted_chunk_keeps_its_mean_as_a1111s_does(pipe):
    from types import SimpleNamespace

    def encoder(ids, output_hidden_states=False):  # an encoder whose outputs have a mean far from zero
        hidden = (1.0 + torch.arange(ids.shape[1], dtype=torch.float32) / 100).view(1, -1, 1).repeat(1, 1, 4)
        return (hidden,)

    stub = SimpleNamespace(tokenizer=pipe.pipe.tokenizer, text_encoder=encoder, config=SimpleNamespace())
    plain = weighted_embeddings(stub, "a cat", "")["prompt_embeds"]
    heavy = weighted_embeddings(stub, "a (cat:2)", "")["prompt_embeds"]
    assert float(heavy.mean()) == pytest.approx(float(plain.mean()), rel=1e-5)
    assert not torch.allclose(heavy, plain)
