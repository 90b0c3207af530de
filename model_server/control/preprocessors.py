"""The ControlNet preprocessors: a control image made into the map a ControlNet was trained on. The built-in
ones (protocol.control.BUILTIN_MODULES) with OpenCV as A1111's extension makes them; those needing an
annotator model through annotators.Annotators.

Each works at ``processor_res`` (the image scaled so its shorter side is that; pixel-perfect units ask
for the job's own), returns an RGB map, and is cheap next to a denoising step (canny on 512x512: a
few milliseconds). The inpaint module's map is the image with the part to fill marked by the mask,
which the engine turns into the inpaint ControlNet's condition (``ControlMap.mask``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from model_server.uploads import resized
from protocol.control import ANNOTATOR_MODULES, IP_ADAPTER, MODULES, module_named, threshold
from protocol.messages import GenerationParams


@dataclasses.dataclass
class ControlMap:
    """A unit's detected map at the job's size; ``mask`` (L, white to fill) for the inpaint module; ``region`` (L,
    white where the unit acts; None: everywhere) from the unit's own mask for the other modules."""

    image: Image.Image
    mask: Image.Image | None = None
    region: Image.Image | None = None


def _cv2():
    import cv2  # only a job with a control unit loads OpenCV

    cv2.setNumThreads(1)  # the maps are small; the torch threads keep the cores
    return cv2


def _scaled(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` with its shorter side at ``side`` (A1111's resize_image_with_pad, without the pad)."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    k = side / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


def detect(module: str, image: Image.Image, resolution: int, a: float = -1, b: float = -1,
           seed: int = 0, annotators=None) -> Image.Image:
    """The map ``module`` makes of ``image`` (RGB) at ``resolution``; ``a``/``b`` its thresholds (-1: defaults);
    ``annotators`` (annotators.Annotators) runs the modules that need an annotator model."""
    cv2 = _cv2()
    spec = MODULES[module]
    pixels = np.asarray(image.convert("RGB"))
    if spec.resolution:
        pixels = _scaled(pixels, resolution)
    a, b = threshold(module, "a", a), threshold(module, "b", b)
    if module in ANNOTATOR_MODULES:
        if annotators is None:  # the submit's check refuses these where no annotator is
            raise ValueError(f"{module} needs an annotator")
        out = annotators.run(module, pixels, a, b)
    elif module in ("none", "inpaint_only", IP_ADAPTER):
        out = pixels
    elif module == "invert":
        out = 255 - pixels
    elif module == "canny":
        out = cv2.Canny(pixels, int(a), int(b))
    elif module in ("binary", "threshold"):
        gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
        if module == "binary" and a == 0:  # Otsu's threshold, white lines on black as A1111's binary gives
            _, out = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        else:
            _, out = cv2.threshold(gray, int(a), 255, cv2.THRESH_BINARY_INV if module == "binary" else
                                   cv2.THRESH_BINARY)
    elif module == "scribble_xdog":
        gray = pixels.astype(np.float32)
        dog = cv2.GaussianBlur(gray, (0, 0), 0.5) - cv2.GaussianBlur(gray, (0, 0), 5.0)
        out = ((dog.min(axis=2) if dog.ndim == 3 else dog) < -a).astype(np.uint8) * 255
    elif module == "blur_gaussian":
        out = cv2.GaussianBlur(pixels, (0, 0), a)
    elif module == "tile_resample":
        h, w = pixels.shape[:2]
        out = cv2.resize(pixels, (max(1, round(w / a)), max(1, round(h / a))), interpolation=cv2.INTER_AREA)
    elif module == "color":
        h, w = pixels.shape[:2]
        small = cv2.resize(pixels, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    elif module == "shuffle":
        out = _shuffled(pixels, seed)
    else:  # protocol.control lists it as built in: a module without a branch here is a bug
        raise ValueError(f"no preprocessor for {module!r}")
    if out.ndim == 2:
        out = np.stack([out] * 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(out))


def _shuffled(pixels: np.ndarray, seed: int) -> np.ndarray:
    """The content shuffle: the image remapped through a smooth random flow, as A1111's shuffle does."""
    cv2 = _cv2()
    h, w = pixels.shape[:2]
    rng = np.random.default_rng(seed)
    cells = 8

    def flow(size: int) -> np.ndarray:
        coarse = rng.uniform(0, size, (cells, cells)).astype(np.float32)
        return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)

    return cv2.remap(pixels, flow(w), flow(h), interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def inpaint_preview(image: Image.Image, mask: Image.Image) -> Image.Image:
    """What the inpaint module's map looks like: the part to fill in black (the condition marks it -1)."""
    black = Image.new("RGB", image.size)
    return Image.composite(black, image.convert("RGB"), mask.convert("L").point(lambda v: 255 if v > 127 else 0))


def unit_map(unit, image: Image.Image, job_side: int, seed: int, annotators=None) -> Image.Image:
    """``unit``'s preprocessor on ``image``, at its processor_res, or ``job_side`` when it is pixel-perfect."""
    side = job_side if unit.pixel_perfect else unit.processor_res
    return detect(module_named(unit.module), image, side, unit.threshold_a, unit.threshold_b, seed, annotators)


def control_maps(params: GenerationParams, images: list, init_image: Image.Image | None, mask: Image.Image | None,
                 seed: int, annotators=None, masks: list | None = None) -> list[ControlMap]:
    """Each unit's map at the job's size: its image (or the init image) through its preprocessor, at its
    processor_res (the job's shorter side when pixel-perfect), then fitted by its resize mode; its own mask (of its
    image's size, fitted the same way) the inpaint module's part to fill, or the other modules' region."""
    maps = []
    for i, (unit, own) in enumerate(zip(params.controls, images)):
        source, module = own if own is not None else init_image, module_named(unit.module)
        own_mask = masks[i] if masks and i < len(masks) else None
        fitted = None if own_mask is None else resized(own_mask, params.width, params.height, unit.resize_mode)
        if module == IP_ADAPTER:  # the reference image as it is: the adapter's image encoder sizes it
            maps.append(ControlMap(source))
            continue
        if module == "inpaint_only":
            maps.append(ControlMap(resized(source, params.width, params.height, unit.resize_mode),
                                   fitted if fitted is not None else mask))
            continue
        made = unit_map(unit, source, min(params.width, params.height), seed, annotators)
        maps.append(ControlMap(resized(made, params.width, params.height, unit.resize_mode), region=fitted))
    return maps
