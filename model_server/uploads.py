"""Images clients send (image-to-image's init image, inpainting's mask), decoded as the hostile
input they may be.

Only PNG, JPEG and WebP; the pixel count is checked from the header before anything is decoded
(a decompression bomb never gets its buffer); EXIF orientation is applied, as a phone's photo
is meant to be seen; the result is RGB at the job's size.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from model_server import errors
from model_server.errors import Rejection
from model_server.finishing.upscalers import cover

FORMATS = {"PNG", "JPEG", "WEBP"}


def decode_init_image(data: bytes, width: int, height: int, max_pixels: int, mode: str = "stretch") -> Image.Image:
    """The init image, RGB, at ``width`` x ``height`` (``mode``: see ``resized``); a Rejection (invalid
    params) if unusable."""
    return as_init_image(decode(data, "init_image", max_pixels, max(width, height)), width, height, mode)


# Shrink by a whole factor with a box filter first, then Lanczos over the last stretch: within a
# rounding error of Lanczos all the way, at a fraction of the time for a large upload.
_REDUCING_GAP = 3.0


def resized(image: Image.Image, width: int, height: int, mode: str = "stretch") -> Image.Image:
    """``image`` at ``width`` x ``height``, as A1111's resize modes make it: ``stretch`` to the size;
    ``crop``: cover it, the aspect kept, and cut the centre; ``fill``: fit inside it, the aspect kept,
    and stretch the edge rows and columns over the rest (so no flat band the model would repaint as one)."""
    if mode == "crop":
        return cover(image, width, height, "LANCZOS")
    if mode != "fill" or image.width * height == image.height * width:
        return image.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    inner = image.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=_REDUCING_GAP)
    out = Image.new(image.mode, (width, height))
    x0, y0 = (width - w) // 2, (height - h) // 2
    out.paste(inner, (x0, y0))
    # The gaps (on two sides of one axis: the image fits the other) take its edge pixels, stretched.
    strips = [((0, 0, 1, h), (x0, h), (0, y0)), ((w - 1, 0, w, h), (width - x0 - w, h), (x0 + w, y0)),
              ((0, 0, w, 1), (w, y0), (x0, 0)), ((0, h - 1, w, h), (w, height - y0 - h), (x0, y0 + h))]
    for edge, size, at in strips:
        if size[0] > 0 and size[1] > 0:
            out.paste(inner.crop(edge).resize(size), at)
    return out


def as_init_image(upright: Image.Image, width: int, height: int, mode: str = "stretch") -> Image.Image:
    return resized(upright.convert("RGB"), width, height, mode)


def decode_mask(data: bytes, init: Image.Image | None, mask_from: str, width: int, height: int, max_pixels: int,
                blur: int = 0, mode: str = "stretch") -> Image.Image:
    """Where to repaint, as an L image at the job's size: white repaints, black keeps. ``init`` is
    the decoded init image (not decoded twice). The mask may differ in size from it (both are
    resized to the job's, in the same ``mode``): OpenAI asks for the same size, A1111 does not.

    ``luminance`` (A1111's and ours): the mask's brightness. ``inverted`` (A1111's
    inpainting_mask_invert): its darkness. ``alpha`` (OpenAI's): the mask's transparent parts
    repaint, and without a mask the init image's own; no alpha repaints it all."""
    if mask_from == "alpha":
        source = decode(data, "mask", max_pixels, max(width, height)) if data else init
        alpha = source.getchannel("A") if "A" in source.getbands() else Image.new("L", source.size, 0)
        mask = ImageOps.invert(alpha)
    else:
        mask = decode(data, "mask", max_pixels, max(width, height)).convert("L")
        if mask_from == "inverted":
            mask = ImageOps.invert(mask)
    mask = resized(mask, width, height, mode)
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


def decode(data: bytes, field: str, max_pixels: int, side: int | None = None) -> Image.Image:
    """The upload the request's ``field`` carried, upright (EXIF applied), in its own mode.

    With ``side``, a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 scale that still
    covers ``side`` on both axes (it is resized to the job's size anyway): a 4096x4096 photo for a
    1024x1024 job decodes at a sixteenth of the pixels, memory and time. Both axes, because
    the EXIF orientation may swap them."""
    what = field.replace("_", " ")
    hint = f"Send a PNG, JPEG or WebP image as {field}."
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            if img.format not in FORMATS:
                raise errors.invalid(f"the {what} is {img.format or 'of an unknown format'}", hint, field)
            w, h = img.size
            if w * h > max_pixels:
                raise errors.invalid(f"the {what} is {w}x{h}: it has more than {max_pixels:,} pixels",
                                     "Send a smaller image; it is resized to the job's width and height anyway.", field)
            if side and img.format == "JPEG":
                img.draft(img.mode, (side, side))
            upright = ImageOps.exif_transpose(img)
            upright.load()
            return upright
    except Rejection:
        raise
    except Image.DecompressionBombError:  # PIL's own guard, for sizes far past ours
        raise errors.invalid(f"the {what} has more than {max_pixels:,} pixels",
                             "Send a smaller image; it is resized to the job's width and height anyway.",
                             field) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise errors.invalid(f"the {what} cannot be read ({type(exc).__name__})", hint, field) from None


def header_size(data: bytes, field: str) -> tuple[int, int]:
    """An upload's width and height as its header says (nothing decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise errors.invalid(f"the {field.replace('_', ' ')} cannot be read ({type(exc).__name__})",
                             f"Send a PNG, JPEG or WebP image as {field}.", field) from None
