"""The SDXL family on the real engine, on the tiny random-weight SDXL pipelines: the family found from
the files and assembled per job from its plan (two text encoders released after encoding, its own
preview colours), the turbo preset on trailing timesteps, step caching through SDXL's added
conditioning, a single-file checkpoint, image-to-image and inpainting."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.families import FAMILIES, detect  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def xl(cache):
    return DiffusersPipeline.load(ModelServerSettings(model="tiny-sdxl", cache_dir=str(cache), dtype="float32"))


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "seed": 3, "steps": 3, "width": 96, "height": 64, **kw})


def run(pipe, p: GenerationParams, init=None, mask=None):
    steps, previews = [], []

    def on_step(step, seconds, preview):
        steps.append(step)
        previews.append(preview)

    image = pipe.generate(p, p.seed, on_step, lambda: None, init_image=init, mask=mask)
    return np.asarray(image, dtype=np.float32), steps, previews


def test_the_family_is_read_from_the_files_and_the_sdxl_classes_run_it(xl, cache):
    assert type(xl.pipe).__name__ == "StableDiffusionXLPipeline" and xl.family is FAMILIES["sdxl"]
    assert detect(str(cache / "tiny-sdxl"), "folder") == "sdxl" and xl.optimizations()["family"] == "sdxl"
    image, steps, previews = run(xl, params(preview=True))
    assert image.shape == (64, 96, 3) and image.std() > 1 and steps == [1, 2, 3]
    assert previews[0].size == (12, 8)  # latent resolution, SDXL's colours
    plan = xl.plan(params())
    assert plan.release[:2] == (("encoding", "text_encoder"), ("encoding", "text_encoder_2"))


def test_both_text_encoders_pages_are_released_after_the_prompt_is_encoded(cache):
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny-sdxl", cache_dir=str(cache), dtype="float32",
                                                      release_idle_weights="all"))
    released = []
    pipe.residency.release = lambda part: released.append(part) or 0
    run(pipe, params())
    assert released == ["text_encoder", "text_encoder_2", "unet"]


def test_image_to_image_and_inpainting_run_the_sdxl_pipelines_of_the_same_modules(xl):
    from PIL import Image

    init = Image.new("RGB", (96, 64), (220, 30, 30))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    changed, steps, _ = run(xl, params(mode="img2img", strength=0.5, steps=4), init=init)
    assert changed.shape == (64, 96, 3) and steps[-1] == 2
    painted, _, _ = run(xl, params(mode="inpaint", strength=0.9, steps=4), init=init, mask=mask)
    assert np.abs(painted[:, 60:] - np.asarray(init, dtype=np.float32)[:, 60:]).max() == 0
    variants = {type(p).__name__: p for p in xl._variants.values()}
    assert set(variants) == {"StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"}
    assert all(p.unet is xl.pipe.unet and p.text_encoder_2 is xl.pipe.text_encoder_2 for p in variants.values())


def test_step_caching_reproduces_the_full_unet_through_sdxls_added_conditioning(xl):
    from model_server.engine.deepcache import DeepCache

    unet = xl.pipe.unet
    cache = DeepCache(unet, 2)
    assert cache.supported
    sample, t = torch.randn(2, 4, 8, 12), torch.tensor(500)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96]] * 2)}
    with torch.inference_mode(), cache.active():
        full = unet(sample, t, text, added_cond_kwargs=added).sample  # keeps the deep features
        shallow = unet(sample, t, text, added_cond_kwargs=added).sample  # reuses them
    assert torch.allclose(full, shallow, atol=1e-5)  # same input: the shallow path is the full UNet
    assert "forward" not in vars(unet)
    cached, _, _ = run(xl, params(steps=6, deep_cache=3, scheduler="dpmpp_2m_karras"))
    plain, _, _ = run(xl, params(steps=6, scheduler="dpmpp_2m_karras"))
    assert not np.array_equal(cached, plain) and np.abs(cached - plain).mean() < 40


def test_sdxl_turbo_runs_one_step_from_the_last_timestep_with_the_tiny_decoder(cache):
    turbo = DiffusersPipeline.load(ModelServerSettings(model="tiny-sdxl-turbo", cache_dir=str(cache),
                                                       dtype="float32"))
    image, steps, _ = run(turbo, params(steps=1, guidance_scale=0.0, preset="turbo"))
    assert steps == [1] and image.std() > 1
    assert turbo.fast_pipe.scheduler.timesteps.tolist() == [999]
    assert type(turbo.fast_pipe.vae).__name__ == "AutoencoderTiny"


def test_the_fast_preset_on_sdxl_attaches_an_sdxl_lcm_lora(xl):
    fast = params(preset="fast", scheduler="lcm", steps=2, guidance_scale=1.0)
    image, steps, _ = run(xl, fast)
    assert steps == [1, 2] and image.std() > 1 and xl.plan(fast).lcm
    assert xl.optimizations()["lcm_lora"].endswith("tiny-extras-sdxl/tiny-lcm-lora")
    assert any("lora_" in name for name, _ in xl.pipe.unet.named_parameters())


def test_above_the_tiling_size_the_vae_decodes_and_encodes_in_tiles_and_only_for_that_job(cache):
    from PIL import Image

    tiled = DiffusersPipeline.load(ModelServerSettings(model="tiny-sdxl", cache_dir=str(cache), dtype="float32",
                                                       vae_tile_above=512))
    vae = tiled.pipe.vae
    calls = []
    for name in ("tiled_decode", "_tiled_encode"):
        original = getattr(vae, name)
        setattr(vae, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))
    big = params(width=640, height=576, steps=2)
    assert tiled.plan(big).decoder == "tiled" and tiled.plan(params()).decoder == "full"
    image, _, _ = run(tiled, big)
    assert image.shape == (576, 640, 3) and calls == ["tiled_decode"] and not vae.use_tiling
    run(tiled, params(mode="img2img", strength=0.5, width=640, height=576, steps=2),
        init=Image.new("RGB", (640, 576), (200, 40, 40)))
    assert calls == ["tiled_decode", "_tiled_encode", "tiled_decode"]
    calls.clear()
    run(tiled, params())
    assert calls == [] and vae.tile_sample_min_size == vae.config.sample_size  # restored after the job


def test_guidances_halves_give_the_batched_output_and_leave_the_unet_as_it_was(xl):
    from model_server.engine.guidance_halves import guidance_halves

    unet = xl.pipe.unet
    sample, t = torch.randn(2, 4, 8, 12), torch.tensor(500)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[64.0, 96, 0, 0, 64, 96]] * 2)}
    calls = []
    hook = unet.conv_in.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.inference_mode():
            whole = unet(sample, t, text, added_cond_kwargs=added).sample
            with guidance_halves(unet, True):
                halves = unet(sample, t, text, added_cond_kwargs=added).sample
                tupled = unet(sample, t, text, added_cond_kwargs=added, return_dict=False)[0]
    finally:
        hook.remove()
    assert calls == [2, 1, 1, 1, 1] and "forward" not in vars(unet)
    assert torch.allclose(whole, halves, atol=1e-5) and torch.equal(halves, tupled)



def test_a_large_image_runs_guidances_halves_and_makes_the_same_image(xl, cache):
    halving = DiffusersPipeline.load(ModelServerSettings(model="tiny-sdxl", cache_dir=str(cache), dtype="float32",
                                                         vae_tile_above=32))
    p = params(guidance_scale=5.0)
    assert halving.plan(p).guidance_halves and not xl.plan(p).guidance_halves
    halved, _, _ = run(halving, p)
    whole, _, _ = run(xl, p)
    assert np.abs(halved - whole).mean() < 0.5  # the same arithmetic, row by row
