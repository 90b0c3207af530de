"""The job plan (model_server/engine/plan.py): every engine decision for a job, made once from the
request and the loaded model's facts, without torch. The engine's own tests
(test_openvino_backend.py, test_presets_pipeline.py, test_inpaint_model.py) check that what runs
is what the plan says; these check the decisions themselves, combination by combination."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from model_server.engine.plan import FAST_LORA, EngineFacts, decide
from protocol.messages import GenerationParams, LoraRef

ON_OPENVINO = EngineFacts(dtype="bfloat16", openvino=True, fused_lcm="pending")


def params(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat", "seed": 1, **kw})


def test_the_plan_is_decided_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['diffusers'] = None; "
            "from model_server.engine.plan import decide, EngineFacts; from protocol.messages import GenerationParams; "
            "print(decide(GenerationParams(prompt='a', seed=1), EngineFacts(family='sdxl')).engine)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch float32"


def test_a_plain_job_on_torch_releases_each_text_encoder_of_its_family_after_encoding():
    sd = decide(params(), EngineFacts())
    assert (sd.unet, sd.on_torch_because, sd.engine, sd.mode, sd.decoder) == ("torch", (), "torch float32",
                                                                             "txt2img", "full")
    assert sd.release == (("encoding", "text_encoder"),)
    xl = decide(params(), EngineFacts(family="sdxl", release_unet=True))
    assert xl.release == (("encoding", "text_encoder"), ("encoding", "text_encoder_2"), ("denoising", "unet"))


def test_on_openvino_the_model_unet_runs_plain_jobs_and_int8_is_named():
    assert decide(params(), ON_OPENVINO).engine == "openvino bfloat16"
    int8 = EngineFacts(dtype="float32", openvino=True, int8="hybrid")
    assert decide(params(), int8).engine == "openvino int8 (hybrid)"


@pytest.mark.parametrize("asked, reason", [
    ({"loras": [LoraRef(name="ink", weight=0.8)]}, "LoRA"), ({"deep_cache": 3}, "deep_cache"),
    ({"token_merging": 0.3}, "token_merging"), ({"tiling": True}, "tiling")])
def test_what_openvino_cannot_run_puts_the_unet_on_torch_and_says_why(asked, reason):
    plan = decide(params(**asked), ON_OPENVINO)
    assert plan.unet == "torch" and plan.on_torch_because == (reason,)
    assert plan.engine == f"torch bfloat16: {reason} runs on torch"
    both = decide(params(deep_cache=3, tiling=True), ON_OPENVINO)
    assert both.engine == "torch bfloat16: deep_cache, tiling run on torch"


def test_the_fast_preset_runs_the_fused_unet_converted_on_its_first_job_else_torch():
    fast = params(preset="fast", scheduler="lcm", steps=4, guidance_scale=1.0)
    first = decide(fast, ON_OPENVINO)
    assert (first.unet, first.lcm, first.converts_first, first.decoder) == ("openvino-lcm", True, True, "tiny")
    assert first.engine == "openvino bfloat16, the LCM-LoRA fused (converted to OpenVINO on this first fast job, once)"
    ready = decide(fast, EngineFacts(dtype="bfloat16", openvino=True, fused_lcm="ready"))
    assert ready.engine == "openvino bfloat16, the LCM-LoRA fused" and not ready.converts_first
    failed = decide(fast, EngineFacts(dtype="bfloat16", openvino=True, fused_lcm="failed"))
    assert failed.unet == "torch" and failed.on_torch_because == (FAST_LORA,)
    with_lora = decide(params(preset="fast", loras=[LoraRef(name="ink")]), ON_OPENVINO)
    assert with_lora.unet == "torch" and not with_lora.converts_first and with_lora.lcm


def test_the_decoder_is_tiny_where_the_preset_asks_and_the_tiny_vae_is_there():
    assert decide(params(preset="turbo"), EngineFacts()).decoder == "tiny"
    assert decide(params(preset="turbo"), EngineFacts(tiny_vae_missing="SD_TINY_VAE=none")).decoder == "full"
    assert decide(params(preset="turbo"), EngineFacts()).trailing
    assert not decide(params(), EngineFacts()).trailing


def test_the_inpainting_checkpoint_inpaints_unless_adapters_are_attached_to_the_models_own_unet():
    facts = EngineFacts(dtype="bfloat16", openvino=True, inpaint_checkpoint=True)
    plan = decide(params(mode="inpaint"), facts)
    assert plan.inpaint_checkpoint and plan.engine == "torch bfloat16: the inpainting checkpoint runs on torch"
    assert not decide(params(mode="inpaint", loras=[LoraRef(name="ink")]), facts).inpaint_checkpoint
    assert not decide(params(mode="inpaint", preset="fast"), facts).inpaint_checkpoint
    assert not decide(params(mode="img2img"), facts).inpaint_checkpoint
    assert decide(params(mode="img2img"), facts).engine == "openvino bfloat16"


def test_large_images_decode_in_the_full_vaes_tiles():
    facts = EngineFacts(vae_tile_above=1024)
    assert decide(params(width=1024, height=1024), facts).decoder == "full"
    assert decide(params(width=1216, height=1024), facts).decoder == "tiled"
    assert decide(params(width=1216, height=1024, tiling=True), facts).decoder == "full"  # wraps around whole
    assert decide(params(width=1216, height=1024, preset="turbo"), facts).decoder == "tiny"
    assert decide(params(width=1216, height=1024), EngineFacts(vae_tile_above=0)).decoder == "full"


def test_few_step_loras_sample_on_trailing_timesteps_on_any_model():
    assert decide(params(loras=[LoraRef(name="sdxl_lightning_4step_lora")]), EngineFacts(family="sdxl")).trailing
    assert decide(params(loras=[LoraRef(name="Hyper-SDXL-8steps-lora")]), EngineFacts(family="sdxl")).trailing
    assert not decide(params(loras=[LoraRef(name="ink")]), EngineFacts(family="sdxl")).trailing


def test_guidances_halves_run_one_after_the_other_on_torch_for_large_images_only():
    facts = EngineFacts(vae_tile_above=768)
    assert decide(params(width=1024, height=1024), facts).guidance_halves
    assert not decide(params(width=768, height=768), facts).guidance_halves
    assert not decide(params(width=1024, height=1024, guidance_scale=1.0), facts).guidance_halves
    assert not decide(params(width=1024, height=1024, deep_cache=3), facts).guidance_halves
    on_openvino = EngineFacts(vae_tile_above=768, openvino=True, dtype="bfloat16")
    assert not decide(params(width=1024, height=1024), on_openvino).guidance_halves


def test_the_balanced_presets_step_caching_is_left_out_where_the_unet_runs_on_openvino():
    balanced = params(preset="balanced", scheduler="dpmpp_2m_karras", steps=20, deep_cache=3)
    plan = decide(balanced, ON_OPENVINO)
    assert (plan.unet, plan.deep_cache, plan.cache_left_out) == ("openvino", 0, True)
    assert plan.engine == "openvino bfloat16, every step (the preset's step caching is for torch)"
    asked = decide(msgspec.structs.replace(balanced, deep_cache=4), ON_OPENVINO)  # not the preset's: asked for
    assert (asked.unet, asked.deep_cache, asked.on_torch_because) == ("torch", 4, ("deep_cache",))
    with_lora = decide(msgspec.structs.replace(balanced, loras=[LoraRef(name="ink")]), ON_OPENVINO)
    assert (with_lora.unet, with_lora.deep_cache) == ("torch", 3)  # on torch anyway: the cache helps there
    on_torch = decide(balanced, EngineFacts(dtype="bfloat16"))
    assert (on_torch.deep_cache, on_torch.cache_left_out, on_torch.engine) == (3, False, "torch bfloat16")


def test_a_size_the_openvino_unet_cannot_take_runs_on_torch_and_says_so():
    facts = EngineFacts(dtype="bfloat16", openvino=True, openvino_multiple=64)
    odd = decide(params(width=304, height=152), facts)
    assert (odd.unet, odd.engine) == ("torch", "torch bfloat16: a size not a multiple of 64 runs on torch")
    assert decide(params(width=768, height=512), facts).unet == "openvino"
