"""LoRAs per job on the real tiny pipeline: both file layouts people have, stacking, weights, a job
without LoRAs untouched, the memory budget, and the fast preset's adapter beside them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.tiny_model import build_tiny_pipeline, write_random_lora  # noqa: E402
from model_server.pipeline import PipelineLoadError  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams, LoraRef  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    write_random_lora(folder / "ink.safetensors", build_tiny_pipeline(), seed=1, kohya=True)
    write_random_lora(folder / "pencil.safetensors", build_tiny_pipeline(), seed=2, kohya=False)
    (folder / "broken.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, lora_dir):
    cache = tmp_path_factory.mktemp("cache")
    return DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(cache), dtype="float32",
                                                      lora_dir=str(lora_dir), lora_cache_mb=64))


def run(pipe, lora_dir, loras: dict[str, float], preset: str = "quality", **kw) -> np.ndarray:
    p = GenerationParams(prompt="a cat", seed=5, steps=2, width=64, height=64, preset=preset,
                         loras=[LoraRef(name=n, weight=w) for n, w in loras.items()], **kw)
    pipe.apply_loras([(n, lora_dir / f"{n}.safetensors", w) for n, w in loras.items()])
    return np.asarray(pipe.generate(p, p.seed, lambda *a: None, lambda: None), dtype=np.float32)


def test_loras_change_the_image_stack_and_leave_later_jobs_untouched(tiny, lora_dir):
    base = run(tiny, lora_dir, {})
    ink = run(tiny, lora_dir, {"ink": 1.0})  # kohya/A1111 layout
    pencil = run(tiny, lora_dir, {"pencil": 1.0})  # diffusers layout
    both = run(tiny, lora_dir, {"ink": 1.0, "pencil": 0.5})
    for image in (ink, pencil, both):
        assert np.abs(image - base).mean() > 1.0
    assert np.abs(both - ink).mean() > 0.5
    assert np.abs(run(tiny, lora_dir, {"ink": 0.25}) - ink).mean() > 0.5  # the weight counts
    assert np.array_equal(run(tiny, lora_dir, {"ink": 1.0}), ink)  # the same job, the same image
    assert np.array_equal(run(tiny, lora_dir, {}), base)  # switched off, nothing of them is left
    assert tiny.loaded_loras() == {"ink", "pencil"}
    assert tiny.engine(GenerationParams(prompt="a", seed=1, loras=[LoraRef(name="ink")])) == "torch float32"


def test_the_text_encoder_part_of_a_kohya_lora_is_applied(tiny, lora_dir):
    run(tiny, lora_dir, {"ink": 1.0})
    encoder = tiny.pipe.text_encoder
    ids = tiny.pipe.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        on = encoder(ids)[0]
        tiny.pipe.disable_lora()
        off = encoder(ids)[0]
        tiny.pipe.enable_lora()
    assert (on - off).abs().max() > 0.1


def test_a_lora_with_the_fast_presets_adapter(tiny, lora_dir):
    fast = dict(preset="fast", scheduler="lcm", guidance_scale=1.0)
    plain, with_ink = run(tiny, lora_dir, {}, **fast), run(tiny, lora_dir, {"ink": 1.0}, **fast)
    assert np.abs(plain - with_ink).mean() > 1.0
    assert np.array_equal(run(tiny, lora_dir, {}, **fast), plain)


def test_the_memory_budget_drops_the_least_recently_used(tmp_path, lora_dir):
    pipe = DiffusersPipeline.load(ModelServerSettings(model="tiny", cache_dir=str(tmp_path), dtype="float32",
                                                      lora_dir=str(lora_dir), lora_cache_mb=0))
    base = run(pipe, lora_dir, {})
    first = run(pipe, lora_dir, {"ink": 1.0, "pencil": 1.0})  # a job's own LoRAs always load
    assert pipe.loaded_loras() == {"ink", "pencil"}
    assert pipe.optimizations()["loras_mb"] > 0
    run(pipe, lora_dir, {"pencil": 1.0})
    assert pipe.loaded_loras() == {"pencil"}  # over the budget: ink, not used by this job, went
    assert run(pipe, lora_dir, {}).tolist() == base.tolist()
    assert pipe.loaded_loras() == set() and pipe.optimizations()["loras_mb"] == 0
    lora_params = [n for n, _ in pipe.pipe.unet.named_parameters() if "lora_" in n]
    assert lora_params == []  # their memory is given back, not just switched off
    assert np.array_equal(run(pipe, lora_dir, {"ink": 1.0, "pencil": 1.0}), first)  # loaded again, same image


def test_a_broken_lora_fails_the_job_clearly_and_the_pipeline_goes_on(tiny, lora_dir):
    with pytest.raises(PipelineLoadError, match="could not load LoRA 'broken'") as info:
        run(tiny, lora_dir, {"broken": 1.0})
    assert "kohya" in info.value.error.hint
    assert run(tiny, lora_dir, {"ink": 1.0}).shape == (64, 64, 3)
