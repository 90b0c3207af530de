"""AUTOMATIC1111's "extras" (upscaling) and its upscaler listings, under ``/sdapi/v1``.

``extra-single-image`` and ``extra-batch-images`` block like A1111's; each image is an upscale job
of the caller's (cancelled if the client hangs up, as every synchronous request): upscaler 1's result,
upscaler 2's blended in at its visibility, the faces restored after when GFPGAN's or CodeFormer's
visibility is above 0 (``a1111_faces``). What is asked but not done is said in ``html_info``, never
silently dropped: face restoration when the server has no restorer.
"""

from __future__ import annotations

import base64

import msgspec
from flask import Blueprint, jsonify

from gateway.a1111_api import decode_request
from gateway.a1111_faces import face_fields
from gateway.errors import ApiError
from gateway.policy import starts_work, takes_images
from gateway.services import services
from gateway.waiting import generate_sync
from protocol.upscalers import LATENT_UPSCALERS

bp = Blueprint("a1111_extras", __name__, url_prefix="/sdapi/v1")
_EXAMPLE = ('Send an A1111 extras JSON object such as {"image": "<base64>", "upscaler_1": "Lanczos", '
            '"upscaling_resize": 2}.')


class ExtrasRequest(msgspec.Struct, kw_only=True):
    """A1111's extras fields (the others it has are accepted and ignored)."""

    resize_mode: int | None = 0  # 0: by upscaling_resize; 1: to upscaling_resize_w x _h
    upscaling_resize: float | None = 2.0
    upscaling_resize_w: int | None = 512
    upscaling_resize_h: int | None = 512
    upscaling_crop: bool | None = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float | None = 0.0
    gfpgan_visibility: float | None = 0.0
    codeformer_visibility: float | None = 0.0
    show_extras_results: bool | None = True
    upscale_first: bool | None = False


class SingleImageRequest(ExtrasRequest, kw_only=True):
    image: str = ""


class BatchImage(msgspec.Struct, kw_only=True):
    data: str
    name: str = ""


class BatchImagesRequest(ExtrasRequest, kw_only=True):
    imageList: list[BatchImage] = []  # noqa: N815  (A1111's name)


def _pixel_upscaler(name: str, field: str) -> str:
    """``name``, unless it is a latent upscaler (the hires fix's only): A1111's 422 naming ``field``."""
    if name in LATENT_UPSCALERS:
        raise ApiError(400, "invalid_params", f"{name} upscales latents (the hires fix only)",
                       "Use a pixel upscaler from GET /sdapi/v1/upscalers.", field=field)
    return name


def _jobs(r: ExtrasRequest, images: list[str]):
    """Each image as an upscale job's Generation, and what was asked but not done (html_info)."""
    sv = services()
    name = _pixel_upscaler(r.upscaler_1 or "None", "upscaler_1")
    notes = []
    second = r.upscaler_2 if (r.upscaler_2 or "None") != "None" and (r.extras_upscaler_2_visibility or 0) > 0 else None
    if second:
        _pixel_upscaler(second, "upscaler_2")
    faces = None
    # A1111 runs GFPGAN, then CodeFormer; one restorer runs here: the more visible one's.
    wanted = max((r.gfpgan_visibility or 0, "GFPGAN"), (r.codeformer_visibility or 0, "CodeFormer"))
    if wanted[0] > 0:
        faces, note = face_fields(wanted[1], min(1.0, wanted[0]), made="they were")
        if note:
            notes.append(note)
    by_size = r.resize_mode == 1
    generations = []
    for text in images:
        data = sv.validator.decoded_upload(text, "image")
        generations.append(sv.validator.upscale(
            data, name, None if by_size else (r.upscaling_resize or 2.0),
            r.upscaling_resize_w if by_size else None, r.upscaling_resize_h if by_size else None,
            face_restoration=faces, upscaler_2=second,
            upscaler_2_visibility=min(1.0, r.extras_upscaler_2_visibility or 0) if second else None))
    return generations, notes


def _parse_single():
    r = decode_request(SingleImageRequest, _EXAMPLE)[0]
    if not r.image:
        raise ApiError(400, "invalid_params", "image is empty", _EXAMPLE, field="image")
    return _jobs(r, [r.image])


def _parse_batch():
    r = decode_request(BatchImagesRequest, _EXAMPLE)[0]
    if not r.imageList:
        raise ApiError(400, "invalid_params", "imageList is empty", _EXAMPLE, field="imageList")
    most = services().settings.max_images
    if len(r.imageList) > most:
        raise ApiError(400, "invalid_params", f"{len(r.imageList)} images; at most {most} per request",
                       f"Send at most {most} images (MAX_IMAGES_PER_REQUEST) at once.", field="imageList")
    return _jobs(r, [item.data for item in r.imageList])


def _html_info(notes: list[str], jobs) -> str:
    sizes = ", ".join(f"{info.width}x{info.height}" for view in jobs for info in view.images)
    return "<p>" + "</p><p>".join([f"Upscaled to {sizes}", *notes]) + "</p>"


@bp.post("/extra-single-image")
@starts_work(_parse_single)
@takes_images
def extra_single_image(parsed):
    generations, notes = parsed
    done, images = generate_sync(services(), generations[0])
    return jsonify(html_info=_html_info(notes, [done]), image=base64.b64encode(images[0][1]).decode("ascii"))


@bp.post("/extra-batch-images")
@starts_work(_parse_batch)
@takes_images
def extra_batch_images(parsed):
    generations, notes = parsed
    results = [generate_sync(services(), generation) for generation in generations]
    return jsonify(html_info=_html_info(notes, [done for done, _ in results]),
                   images=[base64.b64encode(images[0][1]).decode("ascii") for _, images in results])


@bp.get("/upscalers")
def upscalers():
    """A1111's shape: the pixel upscalers (built-ins, then model files by name; no paths)."""
    listing = services().model_list(fresh=True).upscalers
    return jsonify([{"name": u.name, "model_name": u.name if u.kind == "model" else None,
                     "model_path": u.file or None, "model_url": None,
                     "scale": (u.scale or 4.0) if u.kind == "model" else None} for u in listing if u.kind != "latent"])


@bp.get("/realesrgan-models")
def realesrgan_models():
    """A1111's shape for its Real-ESRGAN list: here, the upscaler model files (their names, no paths)."""
    return jsonify([{"name": u.name, "path": None, "scale": int(u.scale) if u.scale else None}
                    for u in services().model_list(fresh=True).upscalers if u.kind == "model"])


@bp.get("/latent-upscale-modes")
def latent_upscale_modes():
    return jsonify([{"name": name} for name in LATENT_UPSCALERS])
