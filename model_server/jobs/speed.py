"""How fast this host runs each kind of job, measured on the jobs it runs, and what a job would take.

An entry per (model, preset, mode, size): seconds per denoising step, seconds per image beyond the
steps (prompt encoding, decoding, writing the file) and the largest resident memory seen, each
smoothed over the jobs measured (the newest weighs 0.3, so a first job's warm-up fades). Only
plain jobs are measured (no LoRAs, hires fix or face restoration, no model switch, not
interrupted): what they add is not a property of the size. A size never measured is predicted
from the nearest measured one of the same model and preset, scaled by the pixel count (the
attention's cost grows faster, so larger sizes are predicted a little short; the hires fix's second
pass is predicted that way too). The table is kept in SD_CACHE_DIR, one file per host (its CPU,
threads and vector extensions): another CPU starts afresh, a restart does not.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import msgspec

from model_server.cpu import cpu_flags
from model_server.jobs.host_file import HostFile, bounded
from model_server.memory import physical_bytes
from protocol.messages import GenerationParams, HostInfo, SpeedEntry, hires_size, hires_steps_run, steps_run

log = logging.getLogger(__name__)
_NEW_WEIGHT = 0.3
MAX_ENTRIES = 256  # the Pong's bound: the oldest measured go first
_ISA = (("avx2", "avx2"), ("avx512f", "avx512"), ("avx_vnni", "vnni"), ("avx512_vnni", "vnni"),
        ("avx512_bf16", "bf16"), ("amx_bf16", "amx"))


def host_info() -> HostInfo:
    """This machine, as its measurements are filed under."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    isa = "+".join(dict.fromkeys(name for flag, name in _ISA if flag in flags))
    return HostInfo(cpu=cpu, threads=len(os.sched_getaffinity(0)), isa=isa, memory_bytes=physical_bytes())


def _key(model: str, preset: str, mode: str, width: int, height: int) -> tuple:
    return model, preset, mode, width, height


class SpeedTable:
    """The measured speeds of this host (see the module); thread-safe."""

    def __init__(self, folder: str | Path | None, host: HostInfo | None = None, clock=time.time):
        self.host = host or host_info()
        self._file = HostFile(folder, "speeds", f"{self.host.cpu}|{self.host.threads}|{self.host.isa}", SpeedEntry,
                              "speeds")
        self.path = self._file.path
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple, SpeedEntry] = {
            _key(e.model, e.preset, e.mode, e.width, e.height): e for e in self._file.read()}

    @staticmethod
    def measurable(params: GenerationParams) -> bool:
        return (params.mode in ("txt2img", "img2img", "inpaint") and params.hires is None
                and params.face_restoration is None and not params.loras)

    def record(self, model: str, params: GenerationParams, step_seconds: float, steps: int, seconds: float,
               images: int, peak_rss_bytes: int = 0) -> None:
        """A finished plain job: ``steps`` timed steps took ``step_seconds`` of its ``seconds``."""
        if not (self.measurable(params) and steps > 0 and images > 0 and model):
            return
        per_step = step_seconds / steps
        per_image = max(0.0, (seconds - per_step * steps_run(params) * images) / images)
        key = _key(model, params.preset, params.mode, params.width, params.height)
        with self._lock:
            old = self._entries.get(key)
            if old is None:
                entry = SpeedEntry(model=model, preset=params.preset, mode=params.mode, width=params.width,
                                   height=params.height, seconds_per_step=round(per_step, 4),
                                   seconds_per_image=round(per_image, 3), peak_rss_bytes=peak_rss_bytes, jobs=1,
                                   steps=steps_run(params), measured_at=self._clock())
            else:
                mix = lambda a, b: (1 - _NEW_WEIGHT) * a + _NEW_WEIGHT * b  # noqa: E731
                entry = msgspec.structs.replace(
                    old, seconds_per_step=round(mix(old.seconds_per_step, per_step), 4),
                    seconds_per_image=round(mix(old.seconds_per_image, per_image), 3),
                    peak_rss_bytes=max(old.peak_rss_bytes, peak_rss_bytes), jobs=old.jobs + 1,
                    steps=steps_run(params), measured_at=self._clock())
            self._entries[key] = entry
            data = bounded(self._entries, MAX_ENTRIES, lambda e: e.measured_at)
        self._file.write(data)

    def entries(self) -> list[SpeedEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: (e.model, e.preset, e.mode, e.width * e.height))

    def _nearest(self, model: str, preset: str, mode: str, pixels: int) -> tuple[float, float] | None:
        """(seconds per step, seconds per image) at ``pixels``, from the nearest measured size."""
        with self._lock:
            same = [e for e in self._entries.values() if e.model == model and e.preset == preset]
        candidates = [e for e in same if e.mode == mode] or same
        if not candidates:
            return None
        near = min(candidates, key=lambda e: abs(e.width * e.height - pixels))
        scale = pixels / (near.width * near.height)
        return near.seconds_per_step * scale, near.seconds_per_image * scale

    def predict(self, model: str, params: GenerationParams) -> float | None:
        """Seconds ``params`` would take on this host once started (None: nothing measured to go by)."""
        if params.mode == "upscale":
            return None
        first = self._nearest(model, params.preset, params.mode, params.width * params.height)
        if first is None:
            return None
        per_step, per_image = first
        # With the hires fix, this size runs the first pass only; the second runs at the larger size (below).
        first_steps = params.steps if params.hires is not None else steps_run(params)
        seconds = params.n * (first_steps * per_step + per_image)
        if params.hires is not None:
            width, height = hires_size(params)
            second = self._nearest(model, params.preset, "img2img", width * height)
            if second is not None:
                seconds += params.n * (hires_steps_run(params) * second[0] + second[1])
        return round(seconds, 1)
