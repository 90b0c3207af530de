"""The real diffusers pipeline on the tiny random-weight model: loading, schedulers, dtypes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.model_loader import choose_dtype, resolve_model  # noqa: E402
from model_server.pipeline import JobCancelledError, PipelineLoadError  # noqa: E402
from model_server.settings import ModelServerSettings, read_token  # noqa: E402
from protocol.messages import SCHEDULERS, GenerationParams, StopMode  # noqa: E402

pytestmark = pytest.mark.slow


def params(**kw):
    base = dict(prompt="a cat", seed=3, steps=3, width=64, height=64)
    return GenerationParams(**(base | kw))


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    return DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype="float32"))


def generate(pipe, p, stop=lambda: None):
    steps = []
    image = pipe.generate(p, p.seed, lambda step, seconds, preview=None: steps.append((step, seconds)), stop)
    return image, steps


def test_a_local_directory_loads_through_from_pretrained_with_the_cpu_defaults(fp32):
    opts = fp32.optimizations()
    assert opts["attention"] == "sdpa" and opts["dtype"] == "float32" and opts["threads"] >= 1
    assert opts["safety_checker"] is False
    assert fp32.pipe.unet.dtype == torch.float32


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_gives_an_image_of_the_requested_size(fp32, scheduler):
    image, steps = generate(fp32, params(scheduler=scheduler, width=96, height=64))
    assert image.size == (96, 64)
    assert [s for s, _ in steps][-1] == 3 and all(s <= 3 for s, _ in steps)


def test_default_means_the_models_own_scheduler_even_after_another_was_used(fp32):
    first, _ = generate(fp32, params())
    generate(fp32, params(scheduler="euler_a"))
    assert np.array_equal(np.asarray(generate(fp32, params())[0]), np.asarray(first))
    assert type(fp32.pipe.scheduler).__name__ == "PNDMScheduler"


def test_the_same_seed_gives_the_same_pixels_and_another_seed_does_not(fp32):
    a, _ = generate(fp32, params(seed=5))
    b, _ = generate(fp32, params(seed=5))
    c, _ = generate(fp32, params(seed=6))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_a_cancel_stops_at_the_next_step_boundary(fp32):
    seen = []

    def stop():
        return StopMode.CANCEL if len(seen) >= 2 else None

    with pytest.raises(JobCancelledError):
        fp32.generate(params(steps=50), 1, lambda step, seconds, preview=None: seen.append(step), stop)
    assert len(seen) == 2


def test_an_interrupt_stops_early_and_still_decodes_an_image(fp32):
    seen = []

    def stop():
        return StopMode.INTERRUPT if len(seen) >= 2 else None

    image = fp32.generate(params(steps=50, width=96), 1, lambda step, seconds, preview=None: seen.append(step), stop)
    assert image.size == (96, 64) and len(seen) == 2


def test_bfloat16_stays_close_to_float32_on_the_same_seed(fp32, tiny_model_dir, tmp_path):
    bf16 = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype="bfloat16", backend="torch",
                                                      cache_dir=str(tmp_path)))
    assert bf16.pipe.unet.dtype == torch.bfloat16
    a = np.asarray(generate(fp32, params())[0], dtype=np.float32)
    b = np.asarray(generate(bf16, params())[0], dtype=np.float32)
    assert np.abs(a - b).mean() < 8.0  # of 255: bf16 rounding, not a different image


def test_sliced_attention_is_available_as_an_opt_in(tiny_model_dir):
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), attention="sliced",
                                                      dtype="float32"))
    assert pipe.optimizations()["attention"] == "sliced"
    assert generate(pipe, params())[0].size == (64, 64)


def test_channels_last_is_automatic_only_where_it_was_measured_to_pay():
    from model_server.cpu import channels_last_pays

    assert channels_last_pays({"avx512_bf16", "amx_bf16"}, {})[0] is True
    assert channels_last_pays({"avx512_bf16", "amx_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"})[0] is False
    assert channels_last_pays({"avx512_bf16", "avx2"}, {})[0] is False
    assert channels_last_pays({"avx2"}, {})[0] is False
    assert ModelServerSettings.from_env({}).channels_last is None
    assert ModelServerSettings.from_env({"SD_CHANNELS_LAST": "1"}).channels_last is True


def test_auto_dtype_picks_bf16_only_with_native_support():
    assert choose_dtype("auto", {"avx2", "avx512_bf16"}, {})[0] == torch.bfloat16
    assert choose_dtype("auto", {"avx2", "amx_bf16"}, {})[0] == torch.bfloat16
    assert choose_dtype("auto", {"avx2", "avx512f"}, {})[0] == torch.float32
    dtype, why = choose_dtype("auto", {"avx512_bf16"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert dtype == torch.float32 and "AVX2" in why
    assert choose_dtype("float32", {"amx_bf16"}, {})[0] == torch.float32


def test_sd_model_tiny_creates_the_tiny_model_in_the_cache(tmp_path):
    path = resolve_model(ModelServerSettings(model="tiny", cache_dir=str(tmp_path)))
    assert (tmp_path / "tiny-sd" / "model_index.json").exists() and path.endswith("tiny-sd")


def test_a_load_failure_explains_itself_and_never_shows_the_token(tmp_path):
    secret = "hf_supersecret123"
    (tmp_path / "broken").mkdir()
    for model in (str(tmp_path / "broken"), "someone/not-downloaded-model"):
        with pytest.raises(PipelineLoadError) as info:
            DiffusersPipeline.load(ModelServerSettings(model=model, token=secret, cache_dir=str(tmp_path)))
        text = f"{info.value.error.message} {info.value.error.hint}"
        assert secret not in text
        assert str(tmp_path) not in text  # no internal paths either
        assert info.value.error.hint
    assert "SD_MODEL" in info.value.error.hint


def test_the_token_comes_from_hf_token_its_alias_or_a_file(tmp_path):
    assert read_token({"HF_TOKEN": "a"}) == "a"
    assert read_token({"HF_AUTH_TOKEN": "b"}) == "b"
    (tmp_path / "token").write_text("c\n")
    assert read_token({"HF_TOKEN_FILE": str(tmp_path / "token")}) == "c"
    assert read_token({}) is None
    assert "hf_not_shown" not in repr(ModelServerSettings(token="hf_not_shown"))  # (a field is named curve_secret_key)


def test_previews_are_latent_resolution_images_made_only_when_asked(fp32):
    previews = []
    fp32.generate(params(steps=2, preview=True, width=128, scheduler="euler"), 1, lambda s, sec, preview=None: previews.append(preview),
                  lambda: None)
    assert [p.size for p in previews] == [(16, 8), (16, 8)]
    plain = []
    fp32.generate(params(steps=2, scheduler="euler"), 1, lambda s, sec, preview=None: plain.append(preview), lambda: None)
    assert plain == [None, None]


def test_channels_last_reads_the_same_values_from_the_bf16_copy(tiny_model_dir, tmp_path):
    settings = ModelServerSettings(model=str(tiny_model_dir), dtype="bfloat16", backend="torch", cache_dir=str(tmp_path))
    plain = DiffusersPipeline.load(settings)
    cl = DiffusersPipeline.load(dataclasses.replace(settings, channels_last=True))
    assert cl.optimizations()["channels_last_unet"].endswith(" 0 copied")
    for (name, a), (_, b) in zip(plain.pipe.unet.named_parameters(), cl.pipe.unet.named_parameters()):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_bf16_is_converted_once_in_a_child_process_then_reused(tiny_model_dir, tmp_path):
    settings = ModelServerSettings(model=str(tiny_model_dir), dtype="bfloat16", backend="torch", cache_dir=str(tmp_path))
    first = DiffusersPipeline.load(settings)
    assert first.optimizations()["weights"] == "bf16 copy (made now)"
    assert first.optimizations()["conversion_seconds"] > 0
    copies = list((tmp_path / "bf16").iterdir())
    assert len(copies) == 1 and (copies[0] / "sd_cpu_converted.json").exists()
    second = DiffusersPipeline.load(settings)
    assert second.optimizations()["weights"] == "bf16 copy (cached)"
    assert second.pipe.unet.dtype == torch.bfloat16
    a = np.asarray(generate(first, params())[0])
    assert np.array_equal(a, np.asarray(generate(second, params())[0]))


def test_a_failed_conversion_falls_back_to_converting_while_loading(tiny_model_dir, tmp_path):
    (tmp_path / "bf16").write_text("not a directory")  # the copy cannot be written
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype="bfloat16", backend="torch",
                                                      cache_dir=str(tmp_path)))
    assert pipe.optimizations()["weights"] == "converted while loading"
    assert generate(pipe, params())[0].size == (64, 64)


def test_channels_last_is_an_opt_in_that_gives_the_same_image(fp32, tiny_model_dir):
    cl = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype="float32", channels_last=True))
    opts = cl.optimizations()
    assert opts["channels_last"] is True and opts["channels_last_reason"] == "configured"
    # Every conv weight is read from the file straight into NHWC; none is copied off the mmap.
    assert opts["channels_last_unet"].endswith(" read from file, 0 copied") and not opts["channels_last_unet"].startswith("0 ")
    assert opts["channels_last_vae"].endswith(" read from file, 0 copied")
    convs = [p for p in list(cl.pipe.unet.parameters()) + list(cl.pipe.vae.parameters()) if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    a = np.asarray(generate(fp32, params())[0], dtype=np.float32)
    b = np.asarray(generate(cl, params())[0], dtype=np.float32)
    assert np.abs(a - b).mean() < 8.0  # the same maths in another layout; kernels round differently


def _init(color=(220, 30, 30), size=(64, 64)):
    from PIL import Image

    return Image.new("RGB", size, color)


@pytest.mark.parametrize("scheduler", ["default", "euler_a", "dpmpp_2m_karras", "lcm"])
def test_img2img_runs_steps_x_strength_from_the_init_image(fp32, scheduler):
    p = params(steps=8, strength=0.5, mode="img2img", scheduler=scheduler)
    steps = []
    image = fp32.generate(p, p.seed, lambda step, seconds, preview=None: steps.append(step), lambda: None,
                          init_image=_init())
    assert image.size == (64, 64) and max(steps) == 4
    # A different init image gives a different result: the image is really the starting point.
    other = fp32.generate(p, p.seed, lambda *a, **k: None, lambda: None, init_image=_init((20, 200, 20)))
    assert not np.array_equal(np.asarray(image), np.asarray(other))


def test_img2img_can_be_cancelled_and_interrupted_like_txt2img(fp32):
    p = params(steps=10, strength=0.6, mode="img2img")
    calls = []

    def stop_after(n, mode):
        return lambda: mode if len(calls) >= n else None

    with pytest.raises(JobCancelledError):
        fp32.generate(p, p.seed, lambda step, *a: calls.append(step), stop_after(2, StopMode.CANCEL),
                      init_image=_init())
    calls.clear()
    image = fp32.generate(p, p.seed, lambda step, *a: calls.append(step), stop_after(2, StopMode.INTERRUPT),
                          init_image=_init())
    assert image.size == (64, 64) and max(calls) < 6
