"""A torch-free pipeline for gateway tests and compose smoke runs.

It honours the whole Pipeline contract (steps, progress, cancellation, size, determinism per
seed) and draws a deterministic noise image from (prompt, seed), so everything around the
model can be exercised in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
import time

from PIL import Image

from model_server.pipeline import SCHEDULERS, JobCancelledError, max_steps
from protocol.messages import GenerationParams, StopMode, steps_run


class FakePipeline:
    """The Pipeline interface without torch: deterministic noise images, real steps and cancellation."""

    def __init__(self, step_seconds: float = 0.0, model_id: str = "fake"):
        self.step_seconds = step_seconds
        self.model_id = f"fake:{model_id}"

    def optimizations(self):
        return {"pipeline": "fake", "dtype": "none", "attention": "none", "threads": 1}

    def schedulers(self) -> list[str]:
        return list(SCHEDULERS)

    def unavailable_presets(self) -> dict[str, str]:
        return {}

    def max_steps(self, scheduler: str) -> int:
        return max_steps(scheduler)

    def engine(self, params: GenerationParams) -> str:
        return "fake"

    def generate(self, params: GenerationParams, seed: int, on_step, stop, init_image=None, mask=None) -> Image.Image:
        total = steps_run(params)
        for step in range(1, total + 1):
            mode = stop()
            if mode is StopMode.CANCEL:
                raise JobCancelledError()
            if mode is not None:
                break
            started = time.monotonic()
            if self.step_seconds:
                time.sleep(self.step_seconds)
            preview = None
            if params.preview:
                shade = int(255 * step / total)
                preview = Image.new("RGB", (params.width // 8, params.height // 8), (shade, shade, shade))
            on_step(step, time.monotonic() - started, preview)
        digest = hashlib.sha256(f"{seed}\0{params.prompt}".encode()).digest()
        rng = random.Random(digest)
        noise = Image.frombytes("RGB", (params.width, params.height), rng.randbytes(params.width * params.height * 3))
        # img2img: the init image shows through, the more the lower the strength.
        if init_image is None:
            return noise
        painted = Image.blend(init_image, noise, params.strength)
        return painted if mask is None else Image.composite(painted, init_image, mask)  # white repaints
