"""Images clients send (image-to-image's init image), decoded as the hostile input they may be.

Only PNG, JPEG and WebP; the pixel count is checked from the header before anything is decoded
(a decompression bomb never gets its buffer); EXIF orientation is applied, as a phone's photo
is meant to be seen; the result is RGB at the job's size.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps, UnidentifiedImageError

from model_server import errors
from model_server.errors import Rejection

FORMATS = {"PNG", "JPEG", "WEBP"}
_HINT = "Send a PNG, JPEG or WebP image as init_image."


def decode_init_image(data: bytes, width: int, height: int, max_pixels: int) -> Image.Image:
    """The init image, RGB, resized to ``width`` x ``height``; a Rejection (invalid params) if unusable."""
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format not in FORMATS:
                raise errors.invalid(f"the init image is {img.format or 'of an unknown format'}", _HINT)
            w, h = img.size
            if w * h > max_pixels:
                raise errors.invalid(f"the init image is {w}x{h}: it has more than {max_pixels:,} pixels",
                                     "Send a smaller image; it is resized to the job's width and height anyway.")
            upright = ImageOps.exif_transpose(img)
            rgb = upright.convert("RGB")
    except Rejection:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, for sizes far past ours
        raise errors.invalid(f"the init image has more than {max_pixels:,} pixels",
                             "Send a smaller image; it is resized to the job's width and height anyway.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise errors.invalid(f"the init image cannot be read ({type(exc).__name__})", _HINT) from None
    return rgb.resize((width, height), Image.Resampling.LANCZOS)
