"""The upscalers a job may name, and running one on an image.

Built in: the pixel resamplers (Lanczos, Nearest, None) and, for the hires fix, the latent ones
(protocol/upscalers.py). From files: every ``.pth`` or ``.safetensors`` under ``UPSCALER_DIR``, named
for the file (A1111's way); its scale is read from its name ("4x-UltraSharp", "RealESRGAN_x2plus")
until it is loaded, then from its weights. A model runs through ``models`` (the engine's, or the
fake's without torch); to reach a factor it does not have, the model runs once and Lanczos makes up
the rest, as A1111 does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from model_server import errors
from model_server.finishing.tiles import tile_grid
from model_server.finishing.first_use import MadeOnFirstUse
from model_server.models.named_files import NamedFiles, on_disk
from model_server.pipeline import PipelineLoadError
from protocol.messages import StopMode, UpscalerEntry
from protocol.upscalers import LATENT_UPSCALERS, PIXEL_UPSCALERS

EXTENSIONS = (".pth", ".safetensors")  # never .pt/.ckpt: TorchScript and full pickles run code
# "4x-UltraSharp", "RealESRGAN_x2plus", "realesr-general-x4v3"; not "x264"
_SCALE_IN_NAME = re.compile(r"(?:^|[^0-9a-z])(?:x([1-8])|([1-8])x)(?![0-9])", re.IGNORECASE)


def _is_upscaler_file(path: Path) -> bool:
    """A model file whose name shadows no built-in upscaler."""
    name = path.stem
    return (path.suffix.lower() in EXTENSIONS and name not in PIXEL_UPSCALERS and name not in LATENT_UPSCALERS
            and name.isprintable())


def scale_from_name(name: str) -> float:
    match = _SCALE_IN_NAME.search(name)
    return float(match.group(1) or match.group(2)) if match else 0.0


class UpscaleModels(Protocol):
    """What runs a model file (engine/upscale_models.py; fake_pipeline.FakeUpscaleModels), in tiles of
    ``tile`` pixels overlapping by ``overlap`` (finishing/tiles.py)."""

    tile: int
    overlap: int

    def describe(self, path: Path) -> tuple[int, str, str] | None: ...

    def upscale(self, path: Path, image: Image.Image, on_tile, stop) -> Image.Image | None: ...


class Upscalers:
    """The built-in upscalers and the model files, by name."""

    def __init__(self, folder: str, models: Callable[[], UpscaleModels]):
        self._listing = NamedFiles(folder, _is_upscaler_file)
        self._models = MadeOnFirstUse(models)

    @property
    def models(self) -> UpscaleModels:
        return self._models.get()

    def files(self) -> dict[str, Path]:
        return self._listing.files()

    def names(self, latent: bool = False) -> list[str]:
        return [*PIXEL_UPSCALERS, *(LATENT_UPSCALERS if latent else ()), *self.files()]

    def entries(self) -> list[UpscalerEntry]:
        out = [UpscalerEntry(name=name, kind="builtin") for name in PIXEL_UPSCALERS]
        out += [UpscalerEntry(name=name, kind="latent") for name in LATENT_UPSCALERS]
        known = self._models.made
        for name, path, stat in on_disk(self.files()):
            described = known.describe(path) if known is not None else None
            out.append(UpscalerEntry(name=name, kind="model", file=path.name, size_bytes=stat.st_size,
                                     scale=float(described[0]) if described else scale_from_name(name),
                                     architecture=described[1] if described else ""))
        return out

    def check(self, name: str, latent: bool, field: str = "upscaler") -> None:
        """A Rejection unless ``name`` is an upscaler here (latent ones only where ``latent``), naming ``field``."""
        if name in PIXEL_UPSCALERS or (latent and name in LATENT_UPSCALERS) or name in self.files():
            return
        if name in LATENT_UPSCALERS:
            raise errors.invalid(f"{name} upscales latents: only for the hires fix",
                                 "Use a pixel upscaler (GET /v1/upscalers, kind builtin or model).", field)
        raise errors.unknown_name("upscaler", name, self.names(latent), "GET /v1/upscalers", field)

    def describe(self, name: str) -> str:
        """What ran ``name`` ("ESRGAN x4, bfloat16"), once its model is loaded; "" for a resampler."""
        path = self.files().get(name)
        described = self.models.describe(path) if path is not None else None
        return f"{described[1]} x{described[0]}, {described[2]}" if described else ""

    def tiles(self, name: str, width: int, height: int) -> int:
        """How many tiles ``name`` runs for an image of ``width`` x ``height`` (1 for a resampler)."""
        if name not in self.files():
            return 1
        models = self.models
        return len(tile_grid(width, height, models.tile, models.overlap))

    def upscale(self, name: str, image: Image.Image, width: int, height: int, on_tile,
                stop: Callable[[], StopMode | None]) -> Image.Image | None:
        """``image`` at ``width`` x ``height``: covered (aspect kept) and centre-cropped, by ``name``.
        None when a stop other than a cancel came between tiles."""
        path = self.files().get(name)
        if path is None and name not in PIXEL_UPSCALERS:
            raise PipelineLoadError(errors.unknown_name("upscaler", name, self.names(), "GET /v1/upscalers").error)
        if path is not None and (width > image.width or height > image.height):
            image = self.models.upscale(path, image, on_tile, stop)
            if image is None:
                return None
        else:
            on_tile(1, 1, 0.0)
        return cover(image, width, height, PIXEL_UPSCALERS.get(name) or "LANCZOS")


def cover(image: Image.Image, width: int, height: int, resample: str) -> Image.Image:
    """``image`` resized to cover ``width`` x ``height`` with its aspect kept, then centre-cropped."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    w, h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((w, h), getattr(Image.Resampling, resample), reducing_gap=3.0)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height))
