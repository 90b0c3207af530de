"""Upscaling on the native API: ``POST /v1/upscale`` starts an upscale job (no diffusion; a job like any
other: progress by tiles, SSE, cancel, TTL, the owner's only; faces restored after when asked),
``GET /v1/upscalers`` lists what a job or a hires fix may name, ``GET /v1/face-restorers`` the face
restoration models."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from flask import Blueprint, jsonify, request
from msgspec import Meta

from gateway.errors import ApiError
from gateway.json_body import convert, decode_object
from gateway.params import Generation
from gateway.policy import starts_work, takes_images
from gateway.services import services
from gateway.waiting import accepted
from protocol.contract import field_of
from protocol.messages import IMAGE_FORMATS, MAX_UPSCALE, FaceRestoration, UpscalerEntry

bp = Blueprint("upscale", __name__)
_EXAMPLE = 'Send {"image": "<base64 PNG>", "scale": 2, "upscaler": "Lanczos"} (GET /v1/upscalers).'


class UpscaleRequest(msgspec.Struct, kw_only=True):
    """An upscale job: the image, and a factor or a size (both sides: covered, then centre-cropped)."""

    image: Annotated[str, Meta(description="The image to upscale, base64 (a data: URL too): PNG, JPEG or WebP; "
                                           "or a file field of a multipart form.")] | None = None
    upscaler: Annotated[str, Meta(description="A name from GET /v1/upscalers (default Lanczos).")] | None = None
    scale: Annotated[float, Meta(ge=1, le=MAX_UPSCALE, description=f"The factor, 1-{MAX_UPSCALE:g} (default 2 "
                                                                   "when no size is given).")] | None = None
    width: Annotated[int, Meta(ge=1, description="Upscale to this width (with height; not with scale).")] | None = None
    height: Annotated[int, Meta(ge=1, description="Upscale to this height (with width).")] | None = None
    format: Literal[IMAGE_FORMATS] | None = None
    quality: Annotated[int, Meta(ge=1, le=100)] | None = None
    upscaler_2: Annotated[str, Meta(description="A second upscaler whose result is blended in (A1111's extras' "
                                                "upscaler 2).")] | None = None
    upscaler_2_visibility: Annotated[float, Meta(ge=0, le=1, description="How much of upscaler_2's result the "
                                                                         "image is (0-1).")] | None = None
    face_restoration: Annotated[FaceRestoration, Meta(description=(
        "Restore the faces after upscaling (upscaler \"None\": only that), with a model from GET "
        "/v1/face-restorers."))] | None = None
    callback_url: Annotated[str, Meta(description="A webhook called when the job ends (as on POST /v1/jobs).")] \
        | None = None


def _parse() -> Generation:
    sv = services()
    files = {}
    if request.mimetype == "multipart/form-data":
        files = {name: f.read() for name, f in request.files.items() if name == "image"}
        raw = dict(request.form.items())
        if "face_restoration" in raw:  # a form field holds the object as JSON text
            raw["face_restoration"] = decode_object(raw["face_restoration"].encode(), _EXAMPLE)
    else:
        raw = decode_object(request.get_data(cache=False), _EXAMPLE)
    try:
        r = convert(raw, UpscaleRequest, strict=request.mimetype != "multipart/form-data")  # form fields are text
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_params", f"invalid request: {exc}", _EXAMPLE, field=field_of(str(exc))) from None
    image = files.get("image") or sv.validator.decoded_upload(r.image, "image")
    return sv.validator.upscale(image, r.upscaler, r.scale, r.width, r.height, r.format, r.quality,
                                face_restoration=r.face_restoration, upscaler_2=r.upscaler_2,
                                upscaler_2_visibility=r.upscaler_2_visibility, callback_url=r.callback_url)


@bp.post("/v1/upscale")
@starts_work(_parse)
@takes_images
def upscale(generation):
    return accepted(services(), generation)


def upscaler_item(u: UpscalerEntry) -> dict:
    return {"name": u.name, "kind": u.kind, "scale": u.scale or None, "file": u.file or None,
            "size_bytes": u.size_bytes or None, "architecture": u.architecture or None}


@bp.get("/v1/upscalers")
def list_upscalers():
    """Built-in resamplers, the hires fix's latent upscalers and the model files in UPSCALER_DIR."""
    return jsonify(upscalers=[upscaler_item(u) for u in services().model_list(fresh=True).upscalers])


@bp.get("/v1/face-restorers")
def list_face_restorers():
    """The face restoration models in FACE_RESTORER_DIR, and the face detector they need (none: no face
    restoration)."""
    listing = services().model_list(fresh=True)
    return jsonify(face_restorers=[{"name": f.name, "file": f.file, "size_bytes": f.size_bytes,
                                    "architecture": f.architecture or None} for f in listing.face_restorers],
                   detector=listing.face_detector or None)
