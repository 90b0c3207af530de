"""Upscaler models from files (ESRGAN, Real-ESRGAN and its compact kind, SwinIR, HAT, DAT, SPAN, ...),
run in tiles on the CPU.

The architecture is read from the weights by spandrel, the library that does exactly that for
every common single-image super-resolution network; we only run what it builds. Tiles
(``finishing/tiles.py``) bound the activations: a 4x model's output of a 256-pixel tile is 1024
pixels whatever the image, so the peak is the model plus one tile's activations plus the
result. Overlapping tiles are blended with linear ramps, so no seam shows. bf16 where the CPU has
it natively and the architecture allows it; float32 otherwise (a laptop's AVX2 emulates bf16
slowly); channels-last either way. A stop is honoured between tiles.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model_server.cpu import native_bf16
from model_server.finishing.tiles import tile_grid
from model_server.pipeline import JobCancelledError, load_error
from protocol.messages import StopMode

log = logging.getLogger(__name__)
_import_lock = threading.Lock()


def _torchvision_fallback() -> None:
    """spandrel imports two torchvision functions at import time: LaMa's rotate (an architecture we do
    not run) and RestoreFormer's normalize (a face restorer, engine/face_restore.py). PyPI's
    torchvision is a CUDA build that cannot load beside the CPU torch we pin (``operator
    torchvision::nms does not exist``), so it is not installed; when it cannot be imported, those
    names are given torch-only versions."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # noqa: BLE001  (absent, or the CUDA build failing to load its operators)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    functional = types.ModuleType("torchvision.transforms.functional")

    def normalize(tensor, mean, std, inplace=False):
        mean = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std) if inplace else (tensor - mean) / std

    def rotate(img, angle, *args, **kwargs):
        if angle % 90:
            raise NotImplementedError("only quarter turns without torchvision")
        return torch.rot90(img, int(angle // 90) % 4, dims=(-2, -1))

    class InterpolationMode:  # the names LaMa passes
        NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"

    functional.normalize, functional.rotate, functional.InterpolationMode = normalize, rotate, InterpolationMode
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def import_spandrel():
    with _import_lock:
        if "spandrel" not in sys.modules:
            _torchvision_fallback()
        import spandrel

    return spandrel


class LoadedUpscaler:
    """One model file, loaded: its network, scale, architecture and the dtype it runs in."""

    def __init__(self, path: Path, descriptor, dtype: torch.dtype):
        self.path, self.descriptor, self.dtype = path, descriptor, dtype
        self.scale = int(descriptor.scale)
        self.architecture = descriptor.architecture.name
        self.stamp = file_stamp(path)


def file_stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime)


def read_model(path: Path, what: str, kinds: str):
    """spandrel's descriptor of the model in ``path`` (.pth, read with its restricted unpickler, or
    .safetensors), or a PipelineLoadError naming the file, ``what`` it should be and the ``kinds`` to use."""
    spandrel = import_spandrel()
    try:
        return spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        raise load_error(f"{path.name} is no {what} spandrel knows", f"Use {kinds}.") from None
    except Exception as exc:  # noqa: BLE001  (a broken or hostile file: its name and what failed, no traceback)
        raise load_error(f"could not read the {what} {path.name} ({type(exc).__name__}: {str(exc)[:200]})",
                         f"Check the file: a .pth or .safetensors {what} model.") from None


def load(path: Path) -> LoadedUpscaler:
    """The upscaler in ``path``, or a PipelineLoadError saying why it cannot be used."""
    spandrel = import_spandrel()
    descriptor = read_model(path, "upscaler", "an ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, SPAN or similar model file")
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise load_error(f"{path.name} is a {descriptor.architecture.name} model for "
                         f"{getattr(descriptor, 'purpose', 'another task')}, not an upscaler",
                         "Put only super-resolution models in UPSCALER_DIR.")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise load_error(f"{path.name} is not an RGB model", "Use an RGB upscaler model.")
    bf16 = native_bf16()[0] and descriptor.supports_bfloat16
    dtype = torch.bfloat16 if bf16 else torch.float32
    descriptor.to(dtype).eval()
    # These networks are stacks of 3x3 convolutions, which oneDNN runs faster channels-last: measured 1.56x
    # for a bf16 ESRGAN tile on an AMD EPYC (docs/performance.md, "Upscalers").
    descriptor.model.to(memory_format=torch.channels_last)
    return LoadedUpscaler(path, descriptor, dtype)


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """1 inside, rising linearly over ``before`` at the start and falling over ``after`` at the end."""
    ramp = torch.ones(length)
    if before:
        ramp[:before] = torch.linspace(1 / (before + 1), before / (before + 1), before)
    if after:
        ramp[length - after:] = torch.linspace(after / (after + 1), 1 / (after + 1), after)
    return ramp


def run_tiled(model: LoadedUpscaler, image: Image.Image, tile: int, overlap: int, on_tile, stop) -> Image.Image | None:
    """``image`` upscaled by the model's scale, tile by tile; ``on_tile(done, total, seconds)`` after
    each. Raises JobCancelledError on a cancel; returns None on an interrupt or skip."""
    s = model.scale
    rgb = np.array(image.convert("RGB"))  # a writable copy: torch shares its memory
    source = torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)  # uint8; each tile converts its own part
    height, width = rgb.shape[:2]
    tiles = tile_grid(width, height, tile, overlap)
    out = torch.zeros(3, height * s, width * s)
    weight = torch.zeros(1, height * s, width * s)
    for done, (x0, y0, x1, y1) in enumerate(tiles, 1):
        mode = stop()
        if mode is StopMode.CANCEL:
            raise JobCancelledError()
        if mode is not None:
            return None
        started = time.monotonic()
        part = (source[:, :, y0:y1, x0:x1].to(model.dtype) / 255).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            result = model.descriptor(part)[0].float()
        # Ramps only where a neighbour overlaps, so the image's own edges keep full weight.
        ramps = [_ramp((b - a) * s, (a > 0) * min(2 * overlap, b - a) * s, (b < end) * min(2 * overlap, b - a) * s)
                 for a, b, end in ((y0, y1, height), (x0, x1, width))]
        w = ramps[0][:, None] * ramps[1][None, :]
        out[:, y0 * s:y1 * s, x0 * s:x1 * s] += result * w
        weight[:, y0 * s:y1 * s, x0 * s:x1 * s] += w
        del result, part
        on_tile(done, len(tiles), time.monotonic() - started)
    out /= weight
    pixels = out.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


class UpscaleModels:
    """Runs model upscalers for the finishing package: the last one used stays loaded (tens of MB)."""

    def __init__(self, tile: int, overlap: int):
        self.tile, self.overlap = tile, overlap
        self._loaded: LoadedUpscaler | None = None

    def describe(self, path: Path) -> tuple[int, str, str] | None:
        """(scale, architecture, dtype) of ``path`` when it is the loaded model, else None (not read yet)."""
        loaded = self._loaded
        if loaded is not None and loaded.stamp == file_stamp(path):
            return loaded.scale, loaded.architecture, str(loaded.dtype).replace("torch.", "")
        return None

    def upscale(self, path: Path, image: Image.Image, on_tile, stop) -> Image.Image | None:
        """``image`` through the model in ``path`` once (its own scale)."""
        if self._loaded is None or self._loaded.stamp != file_stamp(path):
            self._loaded = None  # the old one goes before the new one loads
            started = time.monotonic()
            self._loaded = load(path)
            log.info("upscaler %s loaded in %.2f s: %s x%d, %s", path.name, time.monotonic() - started,
                     self._loaded.architecture, self._loaded.scale, str(self._loaded.dtype).replace("torch.", ""))
        return run_tiled(self._loaded, image, self.tile, self.overlap, on_tile, stop)
