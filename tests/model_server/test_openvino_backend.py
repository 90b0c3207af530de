"""The UNet on OpenVINO (SD_BACKEND=openvino), on the tiny random-weight model: converted once, the
same images as torch within rounding, every sampler and stop mode, and torch for what it cannot run."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")

from model_server.engine import openvino_backend  # noqa: E402
from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.pipeline import JobCancelledError  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams, LoraRef, StopMode  # noqa: E402

pytestmark = pytest.mark.slow


def settings(cache, **kw) -> ModelServerSettings:
    return ModelServerSettings(**({"model": "tiny", "cache_dir": str(cache), "dtype": "float32",
                                   "lcm_lora": "tiny", "tiny_vae": "tiny", "default_size": 64} | kw))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ov(cache):
    return DiffusersPipeline.load(settings(cache, backend="openvino"))


@pytest.fixture(scope="module")
def pt(cache):
    return DiffusersPipeline.load(settings(cache, backend="torch"))


def run(pipe, stop=lambda: None, **kw):
    p = GenerationParams(**({"prompt": "a cat", "seed": 3, "steps": 6, "width": 64, "height": 64} | kw))
    steps, previews = [], []

    def on_step(step, seconds, preview=None):
        steps.append(step)
        previews.append(preview)

    image = pipe.generate(p, p.seed, on_step, stop)
    return np.asarray(image, dtype=np.float32), steps, previews


def ov_calls(pipe) -> int:
    return pipe.ov_pipe.unet.calls


def test_the_unet_is_converted_once_and_compiled_for_the_default_size_at_load(ov, cache):
    opts = ov.optimizations()
    assert opts["backend"] == "openvino" and opts["openvino_ir"] == "made now"
    assert opts["openvino_conversion_seconds"] > 0 and opts["openvino_compiled_for"] == "64x64, batch 2"
    irs = list((cache / "openvino").glob("tiny-sd-*/unet.xml"))
    assert len(irs) == 1
    import openvino

    # float32 inference keeps float32 weights: the CPU plugin ran float16-stored ones 25-35% slower
    stored = {op.get_element_type().get_type_name() for op in openvino.Core().read_model(irs[0]).get_ops()
              if op.get_type_name() == "Constant"}
    assert "f16" not in stored and "f32" in stored
    assert opts["openvino_vae"] == "decode" and opts["openvino_vae_ir"] == "made now"
    assert opts["openvino_vae_compiled_for"] == "64x64" and opts["openvino_vae_compile_seconds"] > 0
    assert len(list((cache / "openvino").glob("tiny-sd-*-vae_decoder/vae_decoder.xml"))) == 1
    again = DiffusersPipeline.load(settings(cache, backend="openvino")).optimizations()
    assert again["openvino_ir"] == "cached" and again["openvino_vae_ir"] == "cached"


@pytest.mark.parametrize("scheduler", ["default", "euler_a", "dpmpp_2m_karras", "unipc"])
def test_the_same_seed_gives_the_torch_image_within_rounding(ov, pt, scheduler):
    before = ov_calls(ov)
    a, steps, _ = run(ov, scheduler=scheduler)
    b, _, _ = run(pt, scheduler=scheduler)
    assert ov_calls(ov) > before and max(steps) == 6
    assert np.abs(a - b).mean() < 1.0  # of 255: float16 weights in the IR, nothing else differs


def test_cancel_interrupt_and_previews_work_as_on_torch(ov):
    calls = []
    with pytest.raises(JobCancelledError):
        run(ov, stop=lambda: StopMode.CANCEL if len(calls.append(1) or calls) >= 2 else None)
    calls.clear()
    image, steps, _ = run(ov, stop=lambda: StopMode.INTERRUPT if len(calls.append(1) or calls) >= 2 else None)
    assert image.shape == (64, 64, 3) and max(steps) < 6
    _, _, previews = run(ov, preview=True)
    assert all(p is not None and p.size == (8, 8) for p in previews)


def test_another_size_compiles_on_demand_and_image_jobs_use_it_too(ov):
    image, _, _ = run(ov, width=96, height=64)
    opts = ov.optimizations()
    assert image.shape == (64, 96, 3) and opts["openvino_compiled_for"] == "96x64, batch 2"
    assert opts["openvino_vae_compiled_for"] == "96x64"
    from PIL import Image

    p = GenerationParams(prompt="a cat", seed=3, steps=6, width=64, height=64, mode="img2img", strength=0.5)
    before = ov_calls(ov)
    ov.generate(p, 3, lambda *a, **k: None, lambda: None, init_image=Image.new("RGB", (64, 64), (200, 20, 20)))
    assert ov_calls(ov) == before + 4  # PNDM: 3 steps, 4 UNet evaluations


@pytest.mark.parametrize("options", [{"deep_cache": 3, "scheduler": "dpmpp_2m_karras"}, {"token_merging": 0.5}])
def test_what_openvino_cannot_run_runs_on_torch_and_the_job_says_so(ov, options):
    before, decodes = ov_calls(ov), ov.pipe.vae.calls
    image, steps, _ = run(ov, **options)
    assert ov_calls(ov) == before and image.shape == (64, 64, 3) and steps
    assert ov.pipe.vae.calls == decodes + 1  # the VAE decoder is OpenVINO's whichever UNet ran
    said = ov.engine(GenerationParams(prompt="a cat", seed=1, **options))
    what = {"deep_cache": "deep_cache", "token_merging": "token_merging"}[next(iter(options))]
    assert said.startswith("torch float32: ") and what in said and said.endswith("runs on torch")


FAST = {"preset": "fast", "steps": 4, "scheduler": "lcm", "guidance_scale": 1.0}


def test_the_fast_preset_runs_on_openvino_with_the_lcm_lora_fused_converted_on_first_use(ov, pt, cache):
    first = ov.engine(GenerationParams(prompt="a cat", seed=1, **FAST))
    assert first == "openvino float32, the LCM-LoRA fused (converted to OpenVINO on this first fast job, once)"
    image, steps, _ = run(ov, **FAST)
    assert ov.fast_unet.unet.calls == 4 and max(steps) == 4
    assert np.abs(image - run(pt, **FAST)[0]).mean() < 1.0  # torch's fast image: the LoRA is fused right
    assert len(list((cache / "openvino").glob("tiny-sd-*-lora-*/unet.xml"))) == 1
    opts = ov.optimizations()
    assert opts["openvino_lcm_ir"] == "made now" and opts["openvino_compiled_for"] == "64x64, batch 1"
    assert ov.ov_pipe.unet.report() == {}  # one compiled UNet at a time
    assert ov.engine(GenerationParams(prompt="a cat", seed=1, **FAST)) == "openvino float32, the LCM-LoRA fused"
    before = ov_calls(ov)
    run(ov)
    assert ov_calls(ov) > before and ov.fast_unet.unet.report() == {}  # back: the fast one dropped
    with_lora = GenerationParams(prompt="a cat", seed=1, loras=[LoraRef(name="style", weight=1)], **FAST)
    assert ov.engine(with_lora) == "torch float32: LoRA runs on torch"  # a job's own LoRAs are not fused


def failing(monkeypatch, flag: str) -> None:
    """The one-time conversions whose arguments include ``flag`` fail, as a crashed child would; others run."""
    real = openvino_backend.run_once

    def run_once(what, args, *rest, **kw):
        if flag in args:
            return None, f"{what} failed (exit 1; see the log)"
        return real(what, args, *rest, **kw)

    monkeypatch.setattr(openvino_backend, "run_once", run_once)


def test_a_failed_fast_conversion_runs_the_fast_preset_on_torch_and_says_so(tmp_path, monkeypatch):
    failing(monkeypatch, "--lora")
    pipe = DiffusersPipeline.load(settings(tmp_path, backend="openvino"))
    image, steps, _ = run(pipe, **FAST)
    assert image.shape == (64, 64, 3) and max(steps) == 4 and pipe.fast_unet.unet is None
    assert pipe.optimizations()["openvino_lcm"].startswith("the UNet with the LCM-LoRA fused in runs on torch")
    assert pipe.engine(GenerationParams(prompt="a cat", seed=1, **FAST)) == \
        "torch float32: the fast preset's LCM-LoRA runs on torch"


def test_the_job_names_the_engine_that_ran_it(ov, pt):
    plain = GenerationParams(prompt="a cat", seed=1)
    assert ov.engine(plain) == "openvino float32" and pt.engine(plain) == "torch float32"
    both = ov.engine(GenerationParams(prompt="a cat", seed=1, deep_cache=2, token_merging=0.3))
    assert both == "torch float32: deep_cache, token_merging run on torch"


def test_a_failed_conversion_leaves_the_server_on_torch(tmp_path, monkeypatch):
    from model_server.engine import convert

    monkeypatch.setattr(convert, "sys", types.SimpleNamespace(executable="/bin/false"))  # every child fails
    pipe = DiffusersPipeline.load(settings(tmp_path, backend="openvino"))
    opts = pipe.optimizations()
    assert pipe.ov_pipe is None and opts["backend"] == "torch" and "OpenVINO IR failed" in opts["backend_reason"]
    assert run(pipe)[0].shape == (64, 64, 3)


def test_a_failed_vae_conversion_leaves_the_decoder_on_torch_and_the_unet_on_openvino(tmp_path, monkeypatch, pt):
    failing(monkeypatch, "vae_decoder")
    pipe = DiffusersPipeline.load(settings(tmp_path, backend="openvino"))
    opts = pipe.optimizations()
    assert opts["backend"] == "openvino" and opts["openvino_vae"].startswith("the VAE decoder runs on torch")
    assert "openvino_vae_compiled_for" not in opts and not hasattr(pipe.pipe.vae, "report")
    assert np.abs(run(pipe)[0] - run(pt)[0]).mean() < 1.0


@pytest.mark.parametrize("mode", ["hybrid", "full"])
def test_int8_quantizes_once_and_stays_near_the_float_image(cache, pt, mode):
    pipe = DiffusersPipeline.load(settings(cache, int8=mode))  # SD_BACKEND=auto: int8 needs OpenVINO
    opts = pipe.optimizations()
    assert opts["backend"] == "openvino" and opts["openvino_int8"] == mode and opts["int8_quantization_seconds"] > 0
    import openvino as ov

    ir = next((cache / "openvino").glob(f"tiny-sd-*-int8-{mode}/unet.xml"))
    kinds = {op.get_type_name() for op in ov.Core().read_model(ir).get_ops()}
    assert "FakeQuantize" in kinds  # activations quantized: the integer units run those layers
    image, steps, _ = run(pipe)
    assert max(steps) == 6 and np.abs(image - run(pt)[0]).mean() < 12.0  # of 255; random weights: numerics only
    assert pipe.engine(GenerationParams(prompt="a cat", seed=1)) == f"openvino int8 ({mode})"
    assert DiffusersPipeline.load(settings(cache, int8=mode)).optimizations()["openvino_int8"] == mode  # cached


def test_int8_without_openvino_is_a_configuration_error():
    with pytest.raises(ValueError, match="SD_INT8"):
        ModelServerSettings(backend="torch", int8="hybrid").validated()


def test_auto_runs_openvino_only_where_it_was_measured_to_pay(monkeypatch):
    from model_server import cpu

    assert cpu.openvino_pays(True, flags={"avx2", "fma"})[0] is False
    assert cpu.openvino_pays(True, flags={"avx512_bf16"}, env={})[0] is True
    assert cpu.openvino_pays(False, flags={"avx512_bf16"}, env={})[0] is False  # float32: torch, for its smaller peak
    assert cpu.openvino_pays(True, flags={"amx_bf16"}, env={"ONEDNN_MAX_CPU_ISA": "AVX2"})[0] is False
    assert openvino_backend.choose(ModelServerSettings(backend="torch"), torch.bfloat16) == (False, "configured")


def test_auto_int8_gives_a_unet_of_a_billion_parameters_int8_weights_and_smaller_ones_their_precision(
        ov, cache, monkeypatch):
    assert "openvino_int8" not in ov.optimizations()  # SD_INT8=auto (the default) on a small UNet: as it is
    assert ov.engine(GenerationParams(prompt="a cat", seed=1)) == "openvino float32"
    monkeypatch.setattr(openvino_backend, "INT8_WEIGHTS_FROM", 1000)  # the tiny UNet as if it were SDXL's
    big = DiffusersPipeline.load(settings(cache, backend="openvino"))
    opts = big.optimizations()
    assert opts["openvino_int8"] == "weights" and opts["openvino_int8_reason"].startswith("auto: a UNet of ")
    assert big.engine(GenerationParams(prompt="a cat", seed=1)) == "openvino int8 (weights)"
    assert run(big)[1][-1] == 6
    image, steps, _ = run(big, **FAST)  # the fast preset's fused UNet keeps int8 weights too
    assert max(steps) == 4 and big.optimizations()["openvino_lcm_ir"] == "made now"
    import openvino as ov

    fused = next(d for d in (cache / "openvino").glob("*-lora-*")
                 if json.loads((d / "sd_cpu_openvino.json").read_text()).get("int8_weights"))
    assert ov.Type.u8 in {op.get_element_type() for op in ov.Core().read_model(fused / "unet.xml").get_ops()
                          if op.get_type_name() == "Constant"}
    assert openvino_backend.int8_mode("auto", big.pipe.unet)[0] == "weights"
    assert openvino_backend.int8_mode("none", big.pipe.unet) == ("none", "configured")  # SD_INT8=none: never
    auto = DiffusersPipeline.load(settings(cache))  # SD_BACKEND=auto in float32 keeps torch, but not for this UNet
    assert auto.optimizations()["backend"] == "openvino" and auto.optimizations()["openvino_int8"] == "weights"
    assert auto.optimizations()["backend_reason"].startswith("a UNet this large runs with int8 weights")
    none = openvino_backend.int8_mode("none", big.pipe.unet)[0]
    assert openvino_backend.choose(ModelServerSettings(int8="none"), torch.float32, none)[0] is False
    on_torch = DiffusersPipeline.load(settings(cache, backend="torch"))  # auto is no reason to leave torch
    assert on_torch.optimizations()["backend"] == "torch" and "openvino_int8" not in on_torch.optimizations()
    ModelServerSettings(backend="torch").validated()  # the default SD_INT8 (auto) with torch is no conflict


def test_a_fast_job_is_told_what_it_waits_for_and_its_cancel_stops_the_conversion(tmp_path):
    pipe = DiffusersPipeline.load(settings(tmp_path, backend="openvino", prepare_ahead=False))
    told = []
    fast = GenerationParams(prompt="a cat", seed=1, **FAST)
    with pytest.raises(JobCancelledError):
        pipe.prepare_parts(fast, told.append, lambda: StopMode.CANCEL)
    assert told and told[0].startswith("converting the fast preset's UNet to OpenVINO, once")
    assert pipe.fast_unet.pending and not pipe.fast_unet.failed  # stopped, not failed: the next fast job converts
    assert not list((tmp_path / "openvino").glob("*-lora-*/unet.xml"))
    pipe.prepare_parts(fast, told.append, lambda: StopMode.INTERRUPT)  # only a cancel stops it
    assert not pipe.fast_unet.pending and pipe.optimizations()["openvino_lcm_ir"] == "made now"
    image, steps, _ = run(pipe, **FAST)
    assert max(steps) == 4 and pipe.fast_unet.unet.calls == 4
    plain = GenerationParams(prompt="a cat", seed=1)
    told.clear()
    pipe.prepare_parts(plain, told.append, lambda: None)
    assert told == []  # nothing to wait for


def test_idle_time_converts_the_fast_unet_ahead_and_a_job_arriving_stops_it(tmp_path):
    pipe = DiffusersPipeline.load(settings(tmp_path, backend="openvino", prepare_ahead=False))
    pipe.load_fast_parts()  # its LoRA on disk, as after `python -m model_server fetch`
    assert pipe.prepare_ahead(lambda: False) is True and pipe.fast_unet.pending  # SD_PREPARE_AHEAD=false
    pipe._settings = dataclasses.replace(pipe._settings, prepare_ahead=True)
    assert pipe.prepare_ahead(lambda: True) is False and pipe.fast_unet.pending  # a job came: stopped at once
    assert pipe.prepare_ahead(lambda: False) is True and not pipe.fast_unet.pending
    assert pipe.fast_unet.unet is None  # converted, not compiled: no second UNet in memory
    fast = GenerationParams(prompt="a cat", seed=1, **FAST)
    assert pipe.engine(fast) == "openvino float32, the LCM-LoRA fused"  # the first fast job waits for nothing
    told = []
    pipe.prepare_parts(fast, told.append, lambda: None)
    assert told == [] and max(run(pipe, **FAST)[1]) == 4


def test_sdxl_runs_on_openvino_with_its_added_conditioning_as_on_torch(cache):
    """SDXL's UNet takes the pooled text embedding and the size/crop ids as two more IR inputs; compiled at load
    for the family's own default size (1024x1024), the tiny decoder and the fused fast UNet as for SD."""
    kw = {"model": "tiny-sdxl", "cache_dir": str(cache), "dtype": "float32", "lcm_lora": "tiny", "tiny_vae": "tiny"}
    ov = DiffusersPipeline.load(ModelServerSettings(backend="openvino", **kw))
    pt = DiffusersPipeline.load(ModelServerSettings(backend="torch", **kw))
    assert ov.optimizations()["openvino_compiled_for"] == "1024x1024, batch 2"
    for extra in ({}, {"scheduler": "euler_a", "negative_prompt": "blurry"}, FAST):
        p = GenerationParams(prompt="a cat", seed=2, **({"steps": 3, "width": 96, "height": 64} | extra))
        before = ov_calls(ov)
        image = ov.generate(p, p.seed, lambda *a: None, lambda: None)
        torch_image = pt.generate(p, p.seed, lambda *a: None, lambda: None)
        assert np.abs(np.asarray(image, dtype=np.float32) - np.asarray(torch_image, dtype=np.float32)).mean() < 1.0
        ran = ov.fast_unet.unet.calls if extra is FAST else ov_calls(ov) - before
        assert ran >= p.steps, extra  # OpenVINO ran it (twice a step with guidance)
    assert ov.engine(GenerationParams(prompt="a cat", seed=1, **FAST)) == "openvino float32, the LCM-LoRA fused"
    assert ov.engine(GenerationParams(prompt="a cat", seed=1)) == "openvino float32"


def test_a_conversion_this_machine_has_no_memory_for_is_not_started_unless_openvino_is_insisted_on(tmp_path,
                                                                                                  monkeypatch):
    from model_server.engine import openvino_backend as backend
    from model_server.engine.tiny_model import write_tiny_model

    folder = write_tiny_model(tmp_path / "m")
    weights = sum(f.stat().st_size for f in (folder / "unet").glob("*.safetensors"))
    monkeypatch.setattr(backend.memory, "available_bytes", lambda: weights * 2)  # under the 3x a conversion takes
    short = backend._short_of_memory(str(folder), "unet", settings(tmp_path, backend="auto"))
    assert "needs about" in short and "fetch --convert" in short
    ir, info = backend.ir_for(str(folder), settings(tmp_path, backend="auto"), "f32")
    assert ir is None and "runs on torch: converting it needs" in info["backend_reason"]
    assert not (tmp_path / "openvino").exists()  # nothing was started
    assert backend._short_of_memory(str(folder), "unet", settings(tmp_path, backend="openvino")) == ""
    monkeypatch.setattr(backend.memory, "available_bytes", lambda: weights * 4)
    assert backend._short_of_memory(str(folder), "unet", settings(tmp_path, backend="auto")) == ""


def test_a_large_image_decodes_in_the_torch_vaes_tiles_and_the_openvino_decoder_keeps_the_small_ones(cache):
    """Compiled whole for a large image, the OpenVINO decoder's activations would stay allocated at that size."""
    pipe = DiffusersPipeline.load(settings(cache, backend="openvino", vae_tile_above=48))
    vae = pipe.pipe.vae
    assert vae.report() == {}  # the default size (64) is above the tiling size: not compiled at load
    tiled = []
    original = vae.torch_vae.tiled_decode
    vae.torch_vae.tiled_decode = lambda *a, **k: tiled.append(1) or original(*a, **k)
    image, _, _ = run(pipe, steps=2, width=576, height=576)  # more than one 512-pixel tile
    assert tiled == [1] and vae.calls == 0 and not vae.decode_on_torch and image.shape == (576, 576, 3)
    image, _, _ = run(pipe, steps=2, width=32, height=32)
    assert tiled == [1] and vae.calls == 1 and image.shape == (32, 32, 3)


def test_a_long_or_weighted_prompt_runs_on_openvino_as_on_torch(ov, pt):
    long = "a cat sitting on a mat in the sun, (glowing:1.3), " * 3  # past 77 tokens: two chunks
    before = ov_calls(ov)
    a, _, _ = run(ov, prompt=long)
    b, _, _ = run(pt, prompt=long)
    assert ov_calls(ov) > before  # the UNet compiled for 154-token prompts, not torch instead
    assert np.abs(a - b).mean() < 1.0
    assert ov.engine(GenerationParams(prompt=long, seed=1)).startswith("openvino")


def test_a_size_the_openvino_unet_cannot_take_runs_on_torch_instead_of_failing(ov):
    multiple = ov.facts().openvino_multiple
    odd = {"width": 64 + 8, "height": 64} if multiple > 8 else pytest.skip("this UNet takes every multiple of 8")
    image, steps, _ = run(ov, **odd)
    assert image.shape[:2] == (64, 72) and max(steps) == 6
    engine = ov.engine(GenerationParams(prompt="a", seed=1, **odd))
    assert engine.endswith(f"not a multiple of {multiple} runs on torch")


def test_with_int8_a_controlnet_job_runs_int8_weight_control_irs_near_the_float_ones(cache, tmp_path):
    import openvino as ov
    from PIL import Image, ImageDraw

    from model_server.control.catalog import ControlNets
    from model_server.control.preprocessors import control_maps
    from model_server.engine.tiny_controlnets import write_tiny_controlnets
    from protocol.messages import ControlUnit

    write_tiny_controlnets(tmp_path, names=("tiny-controlnet",))
    drawing = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(drawing).ellipse((8, 8, 56, 56), outline="black", width=3)
    p = GenerationParams(prompt="a cat", seed=3, steps=4, width=64, height=64,
                         controls=[ControlUnit(module="canny", model="tiny-controlnet")])

    def steered(pipe) -> np.ndarray:
        pipe.apply_controlnets([("tiny-controlnet", ControlNets(str(tmp_path)).find("tiny-controlnet"))])
        pipe.prepare_parts(p, lambda text: None, lambda: None)
        image = pipe.generate(p, p.seed, lambda *a, **k: None, lambda: None,
                              control=control_maps(p, [drawing], None, None, p.seed))
        return np.asarray(image, dtype=np.float32)

    int8 = DiffusersPipeline.load(settings(cache, int8="weights"))
    image = steered(int8)
    assert int8.engine(p) == "openvino int8 (weights), ControlNet on OpenVINO"
    for part in ("unet_control", "controlnet"):
        made = [d for d in (cache / "openvino").glob(f"*-{part}")
                if json.loads((d / "sd_cpu_openvino.json").read_text()).get("int8_weights")]
        assert made, part
        kinds = {op.get_element_type() for op in ov.Core().read_model(made[0] / f"{part}.xml").get_ops()
                 if op.get_type_name() == "Constant"}
        assert ov.Type.u8 in kinds  # its weights are int8 (with their zero points and scales)
    assert np.abs(image - steered(DiffusersPipeline.load(settings(cache, backend="openvino")))).mean() < 12.0
