"""Encoding finished images (PNG/JPEG/WebP) with their generation parameters embedded.

The PNG ``parameters`` text chunk uses AUTOMATIC1111's infotext layout, so tools that read
A1111 images (and people) can see how an image was made.
"""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin

from protocol.infotext import infotext
from protocol.messages import GenerationParams

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_preview(image: Image.Image) -> bytes:
    """A small JPEG: previews are latent-resolution and only need to show the image forming."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=75)
    return buf.getvalue()


def encode_image(image: Image.Image, params: GenerationParams, seed: int, model: str,
                 lora_hashes: dict[str, str] | None = None, described: bool = True) -> tuple[bytes, str]:
    """Return (bytes, media type) in the requested format; a PNG carries its infotext when ``described``."""
    buf = io.BytesIO()
    fmt = params.format
    if fmt == "png":
        meta = PngImagePlugin.PngInfo()
        if described:
            meta.add_text("parameters", infotext(params, seed, model, lora_hashes=lora_hashes))
        # compress_level 1: the PNG is noise-like for tests and photos alike; level 6 costs
        # ~10x the time for a few percent fewer bytes.
        image.save(buf, format="PNG", pnginfo=meta, compress_level=1)
    elif fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=params.quality)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=params.quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue(), MEDIA_TYPES[fmt]
