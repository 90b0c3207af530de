"""Idle mapped weights leave resident memory after their phase, and come back unchanged."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.settings import ModelServerSettings  # noqa: E402
from protocol.messages import GenerationParams  # noqa: E402

pytestmark = pytest.mark.slow


def resident_kib(files: set[str]) -> int:
    """Resident KiB of this process's mappings of ``files``, from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = len(fields) == 6 and fields[5] in files
            elif inside and fields[0] == "Rss:":
                total += int(fields[1])
    return total


def make(pipe) -> np.ndarray:
    p = GenerationParams(prompt="a cat", seed=5, steps=3, width=64, height=64, scheduler="euler")
    return np.asarray(pipe.generate(p, p.seed, lambda *a, **k: None, lambda: None))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_after_a_job_the_text_encoder_and_unet_pages_are_released_and_the_next_job_is_identical(
        tiny_model_dir, tmp_path, dtype):
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype=dtype, cache_dir=str(tmp_path)))
    assert pipe.optimizations()["release_idle_weights"] == "all"
    files = pipe.residency.files
    assert {"unet", "text_encoder", "vae"} <= set(files)
    first = make(pipe)
    assert resident_kib(files["unet"]) == 0 and resident_kib(files["text_encoder"]) == 0
    assert resident_kib(files["vae"]) > 0  # used last, kept: nothing to gain before the next job
    assert np.array_equal(make(pipe), first)


def test_none_keeps_every_weight_resident(tiny_model_dir, tmp_path):
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype="float32",
                                                      cache_dir=str(tmp_path), release_idle_weights="none"))
    assert pipe.optimizations()["release_idle_weights"] == "none" and not pipe.residency.enabled
    make(pipe)
    unet_files = {os.path.realpath(p) for p in (tiny_model_dir / "unet").glob("*.safetensors")}
    assert resident_kib(unet_files) > 0


def test_an_unknown_setting_is_refused():
    with pytest.raises(ValueError, match="SD_RELEASE_IDLE_WEIGHTS"):
        ModelServerSettings.from_env({"SD_RELEASE_IDLE_WEIGHTS": "sometimes"})
