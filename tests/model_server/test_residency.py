"""Idle mapped weights leave resident memory after their phase, and come back unchanged."""

from __future__ import annotations

import mmap
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from model_server.engine.diffusers_pipeline import DiffusersPipeline  # noqa: E402
from model_server.engine.residency import released_while_read  # noqa: E402
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


@pytest.mark.parametrize("dtype,backend", [("float32", "torch"), ("bfloat16", "torch"), ("bfloat16", "openvino")])
def test_after_a_job_the_text_encoder_and_unet_pages_are_released_and_the_next_job_is_identical(
        tiny_model_dir, tmp_path, dtype, backend):
    pipe = DiffusersPipeline.load(ModelServerSettings(model=str(tiny_model_dir), dtype=dtype, cache_dir=str(tmp_path),
                                                      backend=backend))
    assert pipe.optimizations()["release_idle_weights"] == "all"
    files = pipe.residency.files
    assert {"unet", "text_encoder", "vae"} <= set(files)
    first = make(pipe)
    assert resident_kib(files["unet"]) == 0 and resident_kib(files["text_encoder"]) == 0
    if backend == "torch":
        assert resident_kib(files["vae"]) > 0  # used last, kept: nothing to gain before the next job
    else:
        assert resident_kib(files["vae"]) == 0  # OpenVINO decodes: torch's decoder is never read
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


def test_a_file_read_once_under_released_while_read_never_stays_resident_and_reads_right(tmp_path):
    """What OpenVINO's compile does with the IR (a shared read-only mapping, read front to back)."""
    path = tmp_path / "weights.bin"
    data = np.random.default_rng(0).integers(0, 255, 32 * 2**20, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    real = os.path.realpath(path)
    chunk = 2**20

    def read_all(view) -> tuple[int, int]:
        peak, total = 0, 0
        for start in range(0, len(data), chunk):
            total += int(np.frombuffer(view[start:start + chunk], dtype=np.uint8).sum(dtype=np.int64))
            time.sleep(0.005)
            peak = max(peak, resident_kib({real}))
        return peak, total

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        with released_while_read({real}, every=0.01):
            peak, total = read_all(view)
        assert total == int(data.sum(dtype=np.int64))  # the pages that came back are the file's
        assert peak < 0.5 * len(data) / 1024 and resident_kib({real}) == 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
        kept, _ = read_all(view)
        assert kept >= 0.9 * len(data) / 1024  # without it, the whole file stays resident
