"""Face restoration on the CPU: find the faces, align each to the restorer's template, restore it, and
blend it back in.

The restorer (GFPGAN, RestoreFormer: the FaceSR networks spandrel knows) sees every face as the
512-pixel crop it was trained on, aligned by its five landmarks to the FFHQ template (a similarity
transform, least squares). The restored crop goes back through the inverse transform with a mask
eroded and blurred by the face's size, so no edge shows; ``visibility`` blends the result with the
original as A1111 does. Only each face's region is converted to float, so a 4096-pixel image costs
what its faces cost. Weights stay loaded (the restorer ~340 MB for GFPGAN, the detector 1.7-105 MB).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from model_server.cpu import native_bf16
from model_server.engine.face_detector import Face, detect, load_detector
from model_server.engine.upscale_models import file_stamp, read_model
from model_server.pipeline import JobCancelledError, load_error
from protocol.messages import StopMode

log = logging.getLogger(__name__)

CROP = 512
# The FFHQ template the restorers were trained on: the five landmarks' places in a 512-pixel crop.
TEMPLATE = torch.tensor([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                         [201.26117, 371.41043], [313.08905, 371.15118]])
# Faces whose eyes are closer than this (pixels) are too small to restore (A1111's threshold).
MIN_EYE_DISTANCE = 5.0
# At most this many faces per image, the largest first: a crowd costs a bounded time.
MAX_FACES = 16
# Architectures spandrel calls on [0, 1] although they were trained on [-1, 1]: we scale around them.
_SIGNED_INPUT = {"GFPGAN"}


def similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The 2x3 rotation+scale+translation that best maps the points ``src`` onto ``dst`` (least squares)."""
    n = src.shape[0]
    x, y = src[:, 0].double(), src[:, 1].double()
    a = torch.zeros(2 * n, 4, dtype=torch.float64)
    a[0::2] = torch.stack([x, -y, torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)], 1)
    a[1::2] = torch.stack([y, x, torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)], 1)
    p, q, tx, ty = torch.linalg.lstsq(a, dst.double().reshape(-1, 1)).solution.flatten().tolist()
    return torch.tensor([[p, -q, tx], [q, p, ty]], dtype=torch.float64)


def _invert(m: torch.Tensor) -> torch.Tensor:
    full = torch.eye(3, dtype=torch.float64)
    full[:2] = m
    return torch.linalg.inv(full)[:2]


def warp(image: torch.Tensor, to_source: torch.Tensor, width: int, height: int, x0: int = 0, y0: int = 0,
         padding: str = "border") -> torch.Tensor:
    """A ``width`` x ``height`` picture whose pixel (x0 + i, y0 + j) is ``image`` (C x H x W, float) at
    ``to_source`` applied to that pixel (bilinear)."""
    _, h, w = image.shape
    # float32 grids: exact to well under a pixel at 4096 (a float64 one would double a large face's memory)
    m = to_source.tolist()
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) + y0,
                            torch.arange(width, dtype=torch.float32) + x0, indexing="ij")
    sx = m[0][0] * xs + m[0][1] * ys + m[0][2]
    sy = m[1][0] * xs + m[1][1] * ys + m[1][2]
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], -1)[None]
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding, align_corners=False)[0]


def _soft(mask: torch.Tensor, edge: int) -> torch.Tensor:
    """``mask`` (1 x H x W) shrunk by ``edge`` pixels and blurred over as many, so a pasted face fades in."""
    if edge <= 0:
        return mask
    shrunk = -F.max_pool2d(-mask[None], 2 * edge + 1, 1, edge)[0]
    sigma = edge / 2
    radius = edge
    kernel = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)
    out = F.conv2d(F.pad(shrunk[None], (radius, radius, 0, 0), mode="replicate"), kernel)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.transpose(2, 3))[0]


def faces_to_restore(faces: list[Face]) -> list[Face]:
    """The faces worth restoring: eyes at least MIN_EYE_DISTANCE apart, the MAX_FACES largest."""
    def eye_distance(face: Face) -> float:
        (lx, ly), (rx, ry) = face.landmarks[:2]
        return ((lx - rx) ** 2 + (ly - ry) ** 2) ** 0.5

    kept = [f for f in faces if eye_distance(f) >= MIN_EYE_DISTANCE]
    kept.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
    return kept[:MAX_FACES]


def restore_face_in(pixels: np.ndarray, face: Face, restore, visibility: float) -> None:
    """Restore one face of ``pixels`` (H x W x 3 uint8, written in place) with ``restore`` (a 3 x 512 x
    512 float picture in [0, 1] to the same), blended at ``visibility``."""
    height, width = pixels.shape[:2]
    to_crop = similarity(torch.tensor(face.landmarks), TEMPLATE)
    to_image = _invert(to_crop)
    # The crop's corners in the image: the only region it touches.
    corners = to_image[:, :2] @ torch.tensor([[0, CROP, 0, CROP], [0, 0, CROP, CROP]], dtype=torch.float64)
    corners = corners + to_image[:, 2:]
    x0, y0 = max(0, int(corners[0].min()) - 1), max(0, int(corners[1].min()) - 1)
    x1, y1 = min(width, int(corners[0].max()) + 2), min(height, int(corners[1].max()) + 2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    region = torch.from_numpy(pixels[y0:y1, x0:x1]).permute(2, 0, 1).float() / 255
    # The crop is read from the region (shifted by its origin): the rest of the image is never converted.
    shift = torch.tensor([[1, 0, -x0], [0, 1, -y0]], dtype=torch.float64)
    crop_to_region = shift @ torch.cat([to_image, torch.tensor([[0, 0, 1]], dtype=torch.float64)])
    crop = warp(region, crop_to_region, CROP, CROP)
    restored = restore(crop.clamp(0, 1)).float()
    region_to_crop = _invert(crop_to_region)
    back = warp(restored, region_to_crop, x1 - x0, y1 - y0)
    inside = warp(torch.ones(1, CROP, CROP), region_to_crop, x1 - x0, y1 - y0, padding="zeros")
    inside = (inside > 0.999).float()
    edge = int(float(inside.sum()) ** 0.5) // 20
    mask = _soft(-F.max_pool2d(-inside[None], 3, 1, 1)[0], edge) * visibility
    blended = region + (back - region) * mask
    pixels[y0:y1, x0:x1] = blended.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


class LoadedRestorer:
    """A face restorer file, loaded: its network, architecture and the dtype it runs in."""

    def __init__(self, path: Path, descriptor, dtype: torch.dtype):
        self.path, self.descriptor, self.dtype = path, descriptor, dtype
        self.architecture = descriptor.architecture.name
        self.stamp = file_stamp(path)

    @torch.inference_mode()
    def __call__(self, crop: torch.Tensor) -> torch.Tensor:
        x = crop[None].to(self.dtype)
        if self.architecture in _SIGNED_INPUT:
            return ((self.descriptor.model(x * 2 - 1)[0] + 1) / 2).clamp(0, 1)[0]
        return self.descriptor(x)[0]


def load_restorer(path: Path) -> LoadedRestorer:
    descriptor = read_model(path, "face restorer", "a GFPGAN (v1.3, v1.4) or RestoreFormer model file")
    if getattr(descriptor, "purpose", "") != "FaceSR":
        raise load_error(f"{path.name} is a {descriptor.architecture.name} model, not a face restorer",
                         "Put only face restoration models (GFPGAN, RestoreFormer) and the detector in "
                         "FACE_RESTORER_DIR.")
    dtype = torch.bfloat16 if native_bf16()[0] and descriptor.supports_bfloat16 else torch.float32
    descriptor.to(dtype).eval()
    return LoadedRestorer(path, descriptor, dtype)


class FaceModels:
    """Runs face restoration for the finishing package: the detector and the last restorer used stay
    loaded."""

    def __init__(self):
        self._restorer: LoadedRestorer | None = None
        self._detector: tuple[tuple, torch.nn.Module] | None = None

    def describe(self, path: Path) -> tuple[str, str] | None:
        """(architecture, dtype) of ``path`` when it is the loaded restorer, else None."""
        loaded = self._restorer
        if loaded is not None and loaded.stamp == file_stamp(path):
            return loaded.architecture, str(loaded.dtype).replace("torch.", "")
        return None

    def _load_detector(self, path: Path) -> torch.nn.Module:
        if self._detector is None or self._detector[0] != file_stamp(path):
            self._detector = None
            try:
                if path.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    state = load_file(str(path))
                else:
                    state = torch.load(str(path), map_location="cpu", weights_only=True)
                net = load_detector(state)
            except Exception as exc:  # noqa: BLE001  (a broken file: its name and why)
                raise load_error(f"could not read the face detector {path.name} ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})", "Use facexlib's detection_Resnet50_Final.pth "
                                 "(or detection_mobilenet0.25_Final.pth), as A1111 keeps it.") from None
            self._detector = (file_stamp(path), net)
        return self._detector[1]

    def restore(self, path: Path, detector: Path, image: Image.Image, visibility: float,
                stop) -> tuple[Image.Image, int]:
        """``image`` with its faces restored by the model in ``path``, and how many; a cancel between
        faces raises JobCancelledError, another stop returns the image as far as it got."""
        net = self._load_detector(detector)
        if self._restorer is None or self._restorer.stamp != file_stamp(path):
            self._restorer = None  # one restorer in memory: the old one goes before the new one loads
            self._restorer = load_restorer(path)
        pixels = np.array(image.convert("RGB"))
        faces = faces_to_restore(detect(net, torch.from_numpy(pixels).permute(2, 0, 1)))
        done = 0
        for face in faces:
            mode = stop()
            if mode is StopMode.CANCEL:
                raise JobCancelledError()
            if mode is not None:
                break
            restore_face_in(pixels, face, self._restorer, visibility)
            done += 1
        log.info("restored %d of %d faces with %s", done, len(faces), path.name)
        return Image.fromarray(pixels, "RGB"), done
