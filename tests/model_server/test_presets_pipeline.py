"""The presets on the real tiny pipeline: LCM-LoRA switched per job, TAESD as the fast decoder."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from diffusers import AutoencoderTiny  # noqa: E402

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.pipeline import PipelineLoadError  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402
from protocol.presets import PRESETS  # noqa: E402

pytestmark = pytest.mark.slow


def params(name: str, **kw) -> GenerationParams:
    p = PRESETS[name]
    base = dict(prompt="a cat", seed=3, steps=p.steps, guidance_scale=p.guidance_scale, scheduler=p.scheduler,
                width=96, height=64, preset=name)
    return GenerationParams(**(base | kw))


def pixels(pipe, p: GenerationParams) -> np.ndarray:
    return np.asarray(pipe.generate(p, p.seed, lambda *a, **k: None, lambda: None), dtype=np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SD_MODEL=tiny with SD_LCM_LORA / SD_TINY_VAE left at auto: the locally made random parts."""
    cache = tmp_path_factory.mktemp("cache")
    return DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(cache), dtype="float32"))


def test_auto_loads_the_lcm_lora_and_taesd_for_the_tiny_model_on_first_use(tiny):
    opts = tiny.optimizations()
    assert opts["lcm_lora"].endswith("tiny-lcm-lora (loads on first use)") and tiny.fast_pipe is None
    assert not any("lora_" in name for name, _ in tiny.pipe.unet.named_parameters())
    assert tiny.unavailable_presets() == {}
    pixels(tiny, params("fast"))
    opts = tiny.optimizations()
    assert opts["lcm_lora"].endswith("tiny-lcm-lora") and opts["tiny_vae"].endswith("tiny-taesd")
    assert opts["fast_parts_load_seconds"] > 0
    assert isinstance(tiny.fast_pipe.vae, AutoencoderTiny)
    assert tiny.fast_pipe.unet is tiny.pipe.unet  # one UNet in memory, not two


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_gives_an_image_of_the_requested_size(tiny, preset):
    assert pixels(tiny, params(preset)).shape == (64, 96, 3)


def test_the_fast_preset_applies_the_adapter_and_decodes_with_taesd(tiny):
    tiny.load_fast_parts()
    decoded = []
    original = tiny.fast_pipe.vae.decode
    tiny.fast_pipe.vae.decode = lambda *a, **k: decoded.append(1) or original(*a, **k)
    try:
        fast = pixels(tiny, params("fast"))
    finally:
        tiny.fast_pipe.vae.decode = original
    assert decoded == [1] and fast.shape == (64, 96, 3)


def test_the_fast_preset_switches_the_lora_on(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "fast_pipe", None)  # both runs decode with the full VAE
    with_lora = pixels(tiny, params("fast"))
    without = pixels(tiny, params("fast", preset=""))  # same sampler, steps and guidance; no adapter
    assert np.abs(with_lora - without).mean() > 3.0


def test_the_adapter_is_switched_off_again_for_other_presets(tiny):
    before = pixels(tiny, params("quality"))
    pixels(tiny, params("fast"))
    assert np.array_equal(pixels(tiny, params("quality")), before)


def test_without_an_lcm_lora_the_fast_preset_is_unavailable_with_a_reason(tmp_path):
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="float32",
                                                      lcm_lora="none"))
    assert pipe.unavailable_presets() == {"fast": "no LCM-LoRA (SD_LCM_LORA=none)"}
    assert pipe.optimizations()["lcm_lora"] is False and pipe.fast_pipe is None
    with pytest.raises(PipelineLoadError, match="not available") as info:
        pixels(pipe, params("fast"))
    assert "SD_LCM_LORA" in info.value.error.hint
    assert pixels(pipe, params("balanced")).shape == (64, 96, 3)


def test_a_missing_part_disables_the_preset_instead_of_failing_the_load(tmp_path):
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="float32",
                                                      lcm_lora=str(tmp_path / "nowhere")))
    assert "does not exist" in pipe.unavailable_presets()["fast"]
    offline = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="float32",
                                                         lcm_lora="someone/not-cached-lora"))
    assert "not in the local Hugging Face cache" in offline.unavailable_presets()["fast"]


def test_a_part_that_fails_on_first_use_fails_that_job_and_disables_the_preset(tmp_path):
    broken = tmp_path / "broken-lora"
    broken.mkdir()
    (broken / "pytorch_lora_weights.safetensors").write_bytes(b"not safetensors")
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="float32",
                                                      lcm_lora=str(broken)))
    assert pipe.unavailable_presets() == {}
    with pytest.raises(PipelineLoadError):
        pixels(pipe, params("fast"))
    assert "could not load the LCM-LoRA" in pipe.unavailable_presets()["fast"]
    assert pixels(pipe, params("quality")).shape == (64, 96, 3)  # the model itself is untouched


def test_bf16_keeps_the_adapter_in_bf16_and_stays_close_to_float32(tiny, tmp_path):
    bf16 = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="bfloat16", backend="torch"))
    bf16.load_fast_parts()
    lora = {p.dtype for n, p in bf16.pipe.unet.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16} and bf16.fast_pipe.vae.dtype == torch.bfloat16
    for preset in PRESETS:
        a, b = pixels(tiny, params(preset)), pixels(bf16, params(preset))
        assert np.abs(a - b).mean() < 8.0, preset  # of 255: rounding, not a different image


def test_deep_cache_runs_shallow_calls_between_full_ones_and_restores_the_unet(tiny):
    from model_server.engine.deepcache import DeepCache

    unet = tiny.pipe.unet
    full_calls = []
    hook = unet.mid_block.register_forward_hook(lambda *a: full_calls.append(1))  # deep layers ran
    try:
        cached = pixels(tiny, params("balanced", steps=7, deep_cache=3))
        assert len(full_calls) == 3  # calls 0, 3 and 6 of 7
        full_calls.clear()
        plain = pixels(tiny, params("balanced", steps=7, deep_cache=0))
        assert len(full_calls) == 7
    finally:
        hook.remove()
    assert cached.shape == plain.shape == (64, 96, 3)
    assert not np.array_equal(cached, plain)  # a trade-off, not a free lunch
    assert np.abs(cached - plain).mean() < 40  # ...but the same picture, not noise
    assert "forward" not in vars(unet) and DeepCache(unet, 3).supported


def test_deep_cache_and_token_merging_are_undone_when_a_job_is_cancelled(tiny):
    from model_server.pipeline import JobCancelledError
    from protocol.messages import StopMode

    seen = []
    with pytest.raises(JobCancelledError):
        tiny.generate(params("balanced", steps=9, token_merging=0.5), 1, lambda *a, **k: seen.append(1),
                      lambda: StopMode.CANCEL if len(seen) >= 2 else None)
    assert "forward" not in vars(tiny.pipe.unet)
    assert not any(m.attn1._forward_pre_hooks for m in tiny.pipe.unet.modules() if hasattr(m, "attn1"))


def test_token_merging_changes_the_image_a_little_and_leaves_no_hooks_behind(tiny):
    attn = [m for m in tiny.pipe.unet.modules() if hasattr(m, "attn1")]
    plain = pixels(tiny, params("quality", steps=4))
    merged = pixels(tiny, params("quality", steps=4, token_merging=0.5))
    assert merged.shape == plain.shape == (64, 96, 3)
    assert not np.array_equal(merged, plain)
    assert np.abs(merged - plain).mean() < 40  # the same picture, not noise
    assert all(not m.attn1._forward_hooks and not m.attn1._forward_pre_hooks for m in attn)
    assert np.array_equal(pixels(tiny, params("quality", steps=4, token_merging=0.5)), merged)  # same seed, same image
    assert np.array_equal(pixels(tiny, params("quality", steps=4)), plain)
