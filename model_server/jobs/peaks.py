"""What each kind of job took in memory on this host: its peak RSS and its rise over the RSS it started from.

A kind of job is its model and its shape (``shape_of``: mode, what runs its UNet in what precision, preset, and
the parts that add memory: hires fix, control modules, face restoration, LoRAs); an entry per kind and size. Every
job that ends succeeded is measured (unlike the speeds, a switch or a LoRA is part of what memory must be known
for): the peak is kept as the least seen (a floor: what a job of the kind always reached, whatever it started
from), the rise smoothed towards the newest (a first job's one-time costs, such as OpenVINO compiling for a new
size, fade) but never below it. Kept in SD_CACHE_DIR, one file per host and
RAM size, beside the speeds (model_server/jobs/speed.py): another machine starts afresh, a restart does not.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgspec

from model_server.jobs.host_file import HostFile, bounded
from protocol.control import module_named
from protocol.messages import GenerationParams, HostInfo, hires_size

MAX_ENTRIES = 512  # the oldest measured go first
_NEW_WEIGHT = 0.3


class PeakEntry(msgspec.Struct, kw_only=True):
    """One kind of job at one size: what it took on this host."""

    model: str
    shape: str
    pixels: int  # of its largest pass (the hires fix's second, an upscale's result)
    # The least of the peak RSS the jobs reached: the largest may be a job that started on another's leftovers
    # (before OpenVINO's buffers were freed between jobs, bench.memory's img2img job after a 768x768 one peaked at
    # 3.82 GiB and the next at 3.23; a job arriving before the worker's idle release still starts on a freed heap).
    least_peak_bytes: int
    rise_bytes: int  # the peak over the RSS the job started from (smoothed, never below the newest)
    jobs: int = 1
    measured_at: float = 0.0


def engine_kind(engine: str) -> str:
    """What ran the UNet and in what precision (``openvino int8 (weights)``, ``torch float32``): a job's engine
    string without the reason it gives for a fallback. A restart with another SD_DTYPE or SD_INT8 measures afresh."""
    return engine.split(":", 1)[0].strip()


def shape_of(params: GenerationParams, engine: str) -> str:
    """The parts of a job that set its memory beyond its size (see the module)."""
    parts = [params.mode, engine_kind(engine), params.preset]
    if params.hires is not None:
        parts.append(f"hires:{params.hires.upscaler}")
    if params.controls:
        parts.append("control:" + "+".join(sorted(f"{module_named(u.module)}:{u.model}" for u in params.controls)))
    if params.face_restoration is not None:
        parts.append(f"faces:{params.face_restoration.model}")
    if params.loras:
        parts.append(f"loras:{len(params.loras)}")
    if params.mode == "upscale":
        parts.append(f"upscaler:{params.upscaler}+{params.upscaler_2}")
    return "|".join(parts)


def job_pixels(params: GenerationParams, source_pixels: int = 0) -> int:
    """The pixels of the job's largest pass: the hires fix's second pass, an upscale's result (``source_pixels``:
    what admission.source_pixels read from its upload)."""
    if params.mode == "upscale":
        return source_pixels or params.width * params.height
    if params.hires is not None:
        width, height = hires_size(params)
        return width * height
    return params.width * params.height


class PeakTable:
    """The measured peaks of this host (see the module); thread-safe."""

    def __init__(self, folder: str | Path | None, host: HostInfo, clock=time.time):
        self._file = HostFile(folder, "peaks", f"{host.cpu}|{host.threads}|{host.isa}|{host.memory_bytes}", PeakEntry,
                              "peaks")
        self.path = self._file.path
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, int], PeakEntry] = {(e.model, e.shape, e.pixels): e
                                                                for e in self._file.read()}

    def record(self, model: str, shape: str, pixels: int, start_bytes: int, peak_bytes: int) -> None:
        if not (pixels > 0 and peak_bytes > 0):  # model "": an upscale or detect job (no model runs)
            return
        rise = max(0, peak_bytes - start_bytes)
        key = (model, shape, pixels)
        with self._lock:
            old = self._entries.get(key)
            if old is None:
                entry = PeakEntry(model=model, shape=shape, pixels=pixels, least_peak_bytes=peak_bytes, rise_bytes=rise,
                                  measured_at=self._clock())
            else:
                mixed = int((1 - _NEW_WEIGHT) * old.rise_bytes + _NEW_WEIGHT * rise)
                entry = msgspec.structs.replace(old, least_peak_bytes=min(old.least_peak_bytes, peak_bytes),
                                                rise_bytes=max(mixed, rise), jobs=old.jobs + 1,
                                                measured_at=self._clock())
            self._entries[key] = entry
            data = bounded(self._entries, MAX_ENTRIES, lambda e: e.measured_at)
        self._file.write(data)

    def nearest(self, model: str, shape: str, pixels: int) -> PeakEntry | None:
        """The measured entry of this model and shape whose size is nearest ``pixels`` (None: never measured)."""
        with self._lock:
            same = [e for e in self._entries.values() if e.model == model and e.shape == shape]
        return min(same, key=lambda e: (abs(e.pixels - pixels), -e.pixels)) if same else None

    def entries(self) -> list[PeakEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.model, e.shape, e.pixels))
