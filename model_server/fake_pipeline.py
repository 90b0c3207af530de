"""A torch-free pipeline for gateway tests and compose smoke runs.

It honours the whole Pipeline contract (steps, progress, cancellation, size, determinism per
seed) and draws a deterministic noise image from (prompt, seed), so everything around the
model can be exercised in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import random
import time

from PIL import Image

from model_server.finishing.tiles import tile_grid
from model_server.finishing.upscalers import scale_from_name
from model_server.pipeline import SCHEDULERS, JobCancelledError, load_error, max_steps
from protocol.messages import GenerationParams, StopMode, steps_run


class FakePipeline:
    """The Pipeline interface without torch: deterministic noise images, real steps and cancellation."""

    def __init__(self, step_seconds: float = 0.0, model_id: str = "fake"):
        self.step_seconds = step_seconds
        self.model_id = f"fake:{model_id}"
        self._loras: list[tuple[str, float]] = []
        self._loaded: set[str] = set()
        self._controlnets: list[str] = []

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

    def apply_loras(self, loras) -> None:
        # Reads each file's header, as a real load would, so a file that is no safetensors fails here too.
        for name, path, _ in loras:
            if name not in self._loaded:
                with open(path, "rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    try:
                        json.loads(f.read(min(size, 1 << 24)))
                    except ValueError:
                        raise load_error(f"could not load LoRA {name!r}: not a safetensors file", "Check the file.")
                self._loaded.add(name)
        self._loras = [(name, weight) for name, _, weight in loras]

    def loaded_loras(self) -> set[str]:
        return set(self._loaded)

    def apply_controlnets(self, controlnets) -> None:
        for name, model in controlnets:  # its config read, as a real load would
            try:
                if model.path.is_dir():
                    json.loads((model.path / "config.json").read_text(encoding="utf-8"))
                else:
                    with open(model.path, "rb") as f:
                        f.read(8)
            except (OSError, ValueError):
                raise load_error(f"could not load the {model.kind} {name!r}: it cannot be read",
                                 "Check it in CONTROLNET_DIR.") from None
        self._controlnets = [name for name, _ in controlnets]

    def loaded_controlnets(self) -> set[str]:
        return set(self._controlnets)

    def prepare_parts(self, params: GenerationParams, report, stop) -> None:
        pass  # nothing is made once here

    def prepare_ahead(self, stop) -> bool:
        return True

    def resize_latents(self, latents: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
        return latents.resize((width, height), Image.Resampling.BILINEAR)  # its "latents" are the image

    def generate(self, params: GenerationParams, seed: int, on_step, stop, init_image=None, mask=None,
                 output: str = "image", control=None) -> Image.Image:
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
        # The model and LoRAs change the image, as they would a real one's.
        extra = f"\0{self.model_id}" + "".join(f"\0{name}:{weight:g}" for name, weight in self._loras)
        digest = hashlib.sha256(f"{seed}\0{params.prompt}{extra}".encode()).digest()
        rng = random.Random(digest)
        noise = Image.frombytes("RGB", (params.width, params.height), rng.randbytes(params.width * params.height * 3))
        # Each control map shows through at its unit's weight (half at most), within its region, so a test sees
        # it steer.
        for unit, made in zip(params.controls, control or ()):
            steered = Image.blend(noise, made.image.convert("RGB").resize(noise.size), min(0.5, unit.weight / 2))
            noise = steered if made.region is None else Image.composite(steered, noise, made.region.resize(noise.size))
        # img2img: the init image shows through, the more the lower the strength.
        if init_image is None:
            return noise
        painted = Image.blend(init_image, noise, params.strength)
        return painted if mask is None else Image.composite(painted, init_image, mask)  # white repaints


class FakeUpscaleModels:
    """Upscaler model files without torch: the file's header is read as a load would read it, the
    scale comes from its name, and each tile takes a moment, so progress and cancel run as with a model."""

    def __init__(self, tile: int, overlap: int, tile_seconds: float = 0.0):
        self.tile, self.overlap, self.tile_seconds = tile, overlap, tile_seconds

    def describe(self, path):
        return int(scale_from_name(path.stem) or 4), "fake", "none"

    def upscale(self, path, image: Image.Image, on_tile, stop):
        with open(path, "rb") as f:
            if not f.read(8):
                raise load_error(f"could not read the upscaler {path.name}", "Check the file.")
        total = len(tile_grid(image.width, image.height, self.tile, self.overlap))
        for done in range(1, total + 1):
            mode = stop()
            if mode is StopMode.CANCEL:
                raise JobCancelledError()
            if mode is not None:
                return None
            time.sleep(self.tile_seconds)
            on_tile(done, total, self.tile_seconds)
        scale = self.describe(path)[0]
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


class FakeFaceModels:
    """Face restorer files without torch: the files are read as a load would read them, one "face" is
    found in the middle of every image and "restored" (inverted) at the visibility asked."""

    def describe(self, path):
        return "fake", "none"

    def restore(self, path, detector, image: Image.Image, visibility: float, stop):
        for file in (path, detector):
            with open(file, "rb") as f:
                if not f.read(8):
                    raise load_error(f"could not read {file.name}", "Check the file.")
        if stop() is StopMode.CANCEL:
            raise JobCancelledError()
        w, h = image.size
        box = (w // 4, h // 4, w - w // 4, h - h // 4)
        face = image.crop(box)
        image = image.copy()
        image.paste(Image.blend(face, Image.eval(face, lambda v: 255 - v), visibility), box)
        return image, 1
