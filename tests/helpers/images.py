"""Large uploads for the tests that measure what decoding them costs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def large_upload(fmt: str, side: int = 4096) -> bytes:
    """A ``side`` x ``side`` image that compresses to little (it must fit MAX_UPLOAD_BYTES) but decodes to
    full size: WEBP (RGB), PNG (RGBA), PNG16 (16-bit grey, the widest PNG pixels PIL keeps) or JPEG (CMYK)."""
    ramp = np.tile(np.arange(side, dtype=np.uint16)[None, :], (side, 1))
    if fmt == "PNG16":
        image, fmt = Image.fromarray(ramp * 16), "PNG"
    else:
        band = (ramp % 256).astype(np.uint8)
        image = Image.fromarray(np.dstack([band] * 4), "RGBA")
        image = image.convert({"JPEG": "CMYK", "WEBP": "RGB"}.get(fmt, "RGBA"))
    buffer = io.BytesIO()
    image.save(buffer, fmt, quality=50)
    return buffer.getvalue()
