"""OpenAI Images API compatibility: ``POST /v1/images/generations`` and ``GET /v1/models``.

Works with the official ``openai`` SDK and tools built on it (Open WebUI, ...). Mapping:
``size`` "WxH" -> width/height ("auto": the model's default size; OpenAI's own 1024-class sizes: the
model's nearest trained size, see ``_size``); ``n`` -> images (seeds seed, seed+1...);
``response_format`` ``b64_json`` (the default here: self-contained) or ``url`` (the job's image
URL, fetchable for RESULT_TTL_SECONDS); ``quality`` -> steps (low 15, standard/medium/auto the
default, hd/high 40); ``output_format``/``output_compression`` -> format/quality; ``model``,
``model`` names one of ``GET /v1/models`` (OpenAI's own names, ``dall-e-2``, ``gpt-image-1``..., mean the
default model); ``style``, ``user``, ``background``, ``moderation`` are accepted and ignored.
Our own fields (``seed``, ``steps``, ``negative_prompt``, ``guidance_scale``, ``scheduler``,
``preset``, ``deep_cache``, ``token_merging``, ``loras``) may be sent through the SDK's ``extra_body``; with a
``preset``, ``quality`` no longer sets the steps. ``stream`` with ``partial_images`` answers with OpenAI's
server-sent events (``openai_stream``). Errors use OpenAI's shape so the SDK fills
``e.message``/``e.code``/``e.param``.
"""

from __future__ import annotations

import base64
import math
import re
import time
from typing import Annotated, Literal

import msgspec
from msgspec import Meta
from flask import Blueprint, jsonify, request

from gateway.catalog_api import model_item
from gateway.errors import ApiError
from gateway.json_body import convert, decode_object
from gateway.openai_stream import MAX_PARTIAL_IMAGES, stream_images
from gateway.policy import starts_work, takes_images
from gateway.services import services
from gateway.waiting import generate_sync
from protocol.contract import field_of
from protocol.messages import GenerationParams

bp = Blueprint("openai", __name__)
_EXAMPLE = 'Send JSON such as {"prompt": "a cat", "size": "512x512"}.'
_HINTS = {"size": "Use WIDTHxHEIGHT with multiples of 8, e.g. 512x512, or 'auto'.",
          "response_format": "Use b64_json or url.",
          "quality": "Use auto, low, medium or high (or DALL-E 3's standard or hd).",
          "output_compression": "Use a whole number from 0 to 100 (jpeg and webp).",
          "partial_images": f"Use 0 to {MAX_PARTIAL_IMAGES}, with stream: true."}
# Our field names as OpenAI's requests call them, for errors' ``param`` and text.
_OPENAI_FIELDS = {"init_image": "image", "width": "size", "height": "size"}
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# The sizes gpt-image and DALL-E 3 offer: shapes, mapped to the model's trained sizes (DALL-E 2's 256 and 512
# squares are taken as given: asked for small, small it is).
_OPENAI_SIZES = {"1024x1024", "1024x1536", "1536x1024", "1792x1024", "1024x1792"}
_QUALITY_STEPS = {"low": 15, "hd": 40, "high": 40}
_OPENAI_MODELS = re.compile(r"^(dall-e-\d|gpt-image-\d(\.\d+)?(-mini)?)$")
# Our own fields reach through the SDK's extra_body: every contract field OpenAI's fields do not already
# map (a new field in GenerationParams arrives here by itself). "quality" is OpenAI's own (steps).
_PASSTHROUGH = tuple(f.name for f in msgspec.structs.fields(GenerationParams)
                     if f.name not in ("prompt", "n", "width", "height", "format", "quality", "preview", "model"))
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          409: "conflict_error", 410: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}


class ImagesRequest(msgspec.Struct, kw_only=True):
    prompt: str
    n: int | None = None
    size: Annotated[str, Meta(pattern=r"^(\d{1,5}x\d{1,5}|auto)$")] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    model: str | None = None
    # gpt-image's (auto, high, medium, low) and DALL-E 3's (standard, hd), as OpenAI accepts them.
    quality: Literal["auto", "low", "medium", "high", "standard", "hd"] | None = None
    style: str | None = None
    user: str | None = None
    output_format: str | None = None
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Meta(ge=0, le=MAX_PARTIAL_IMAGES)] | None = None


def error_body(err: ApiError) -> dict:
    """An error as OpenAI's API words it: {"error": {message, type, param, code}}."""
    message = f"{err.message}. {err.hint}".strip() if err.hint else err.message
    message = message.replace("init_image", "image").replace("init image", "image")
    return {"error": {"message": message, "type": _TYPES.get(err.status, "server_error"),
                      "param": _OPENAI_FIELDS.get(err.field, err.field), "code": err.code}}


def render_error(err: ApiError):
    body = error_body(err)
    headers = err.headers()
    if err.status >= 500 and err.retry_after is None:
        headers["x-should-retry"] = "false"  # a failed generation will fail again; don't triple the wait
    return jsonify(body), err.status, headers



def _size(value: str | None, model: str | None) -> dict:
    """``size`` as width and height: "auto" (or none) the model's default; one of the sizes OpenAI's own
    models offer (1024x1024, 1024x1536, ...) the model's trained size nearest in aspect (SDXL 832x1216 for
    1024x1536, SD 1.x 512x512 for 1024x1024), as an OpenAI client means "this shape, the model's best";
    any other size as given."""
    if value in (None, "auto"):
        return {}
    match = _SIZE.match(value)  # the type's pattern let it through, so it matches
    width, height = int(match.group(1)), int(match.group(2))
    entry = services().model_entry(model or "") if value in _OPENAI_SIZES else None
    if entry and entry.sizes:
        width, height = nearest_size([tuple(map(int, size.split("x"))) for size in entry.sizes], width, height)
    return {"width": width, "height": height}


def nearest_size(sizes: list[tuple[int, int]], width: int, height: int) -> tuple[int, int]:
    """The size closest in aspect ratio to width x height (on a tie, the one closest in area)."""
    wanted = math.log(width / height)
    return min(sizes, key=lambda s: (round(abs(math.log(s[0] / s[1]) - wanted), 6), abs(s[0] * s[1] - width * height)))


def _model(name: str | None) -> str | None:
    """OpenAI's model names (and none) mean the default model; any other must be one of ours."""
    if not name or _OPENAI_MODELS.match(name):
        return None
    return name


def _to_fields(r: ImagesRequest, raw: dict) -> dict:
    fields = {"prompt": r.prompt, "n": r.n, "model": _model(r.model), **_size(r.size, _model(r.model))}
    if r.quality in _QUALITY_STEPS and "preset" not in raw:
        fields["steps"] = _QUALITY_STEPS[r.quality]
    if r.output_format is not None:
        fields["format"] = r.output_format
    if r.output_compression is not None:
        fields["quality"] = max(1, 100 - r.output_compression)
    if r.partial_images and not r.stream:
        raise ApiError(400, "invalid_request", "partial_images needs stream: true", _HINTS["partial_images"],
                       field="partial_images")
    if r.stream and r.partial_images:
        fields["preview"] = True  # the partial images are the step previews
    fields.update({k: raw[k] for k in _PASSTHROUGH if k in raw})
    return fields


def _parse():
    return _validated(decode_object(request.get_data(cache=False), _EXAMPLE))


def _parse_edit():
    """``/v1/images/edits``: multipart form fields, the image file and the optional mask file.
    Transparent parts repaint (the mask's, else the image's own), as OpenAI documents."""
    form = {key: value for key, value in request.form.items()}
    image = request.files.get("image") or next(iter(request.files.getlist("image[]")), None)
    if image is None:
        raise ApiError(400, "invalid_request", "image is required",
                       "Send the image to edit as the multipart file field 'image'.", field="image")
    mask = request.files.get("mask")
    checked = services().validator.checked_upload
    files = {"init_image": _not_empty(checked(image.read(), "image"), "image")}
    if mask is not None:
        files["mask"] = _not_empty(checked(mask.read(), "mask"), "mask")
    return _validated(form, files, lax=True)


def _not_empty(data: bytes, field: str) -> bytes:
    if not data:
        raise ApiError(400, "invalid_request", f"the {field} file is empty",
                       f"Send a PNG, JPEG or WebP image as the multipart file field '{field}'.", field=field)
    return data


def _validated(raw: dict, files: dict | None = None, lax: bool = False):
    """OpenAI's fields (form fields are strings: ``lax`` converts "2" to 2) into a Generation."""
    sv = services()
    try:
        r = convert(raw, ImagesRequest, strict=not lax)
    except msgspec.ValidationError as exc:
        field = field_of(str(exc))
        hint = _HINTS.get(field, _EXAMPLE)
        raise ApiError(400, f"invalid_{field}" if field in _HINTS else "invalid_request",
                       f"invalid request body: {exc}", hint, field=field) from None
    response_format = r.response_format or "b64_json"
    try:
        generation = sv.validator.parse_object(_to_fields(r, raw), mask_from="alpha", strict=not lax, files=files)
    except ApiError as exc:
        exc.field = _OPENAI_FIELDS.get(exc.field, exc.field)
        raise
    return generation, response_format, r


@bp.post("/v1/images/generations")
@starts_work(_parse)
def generations(parsed):
    return _answer(parsed, "image_generation")


@bp.post("/v1/images/edits")
@starts_work(_parse_edit)
@takes_images
def edits(parsed):
    return _answer(parsed, "image_edit")


def _answer(parsed, events: str):
    """Run the job and answer as OpenAI does: {created, data: [{b64_json | url, revised_prompt}]}, or its
    events (``events``: their names' prefix) when the request streams."""
    sv = services()
    generation, response_format, r = parsed
    if r.stream:
        return stream_images(sv, generation, r.partial_images or 0, events, r.quality, error_body)
    params = generation.params
    done, images = generate_sync(sv, generation)
    base = (sv.settings.public_url or request.host_url).rstrip("/")
    data = []
    for info, blob in images:
        item = {"revised_prompt": params.prompt}
        if response_format == "url":
            item["url"] = f"{base}/v1/jobs/{done.job_id}/image?index={info.index}"
        else:
            item["b64_json"] = base64.b64encode(blob).decode("ascii")
        data.append(item)
    return jsonify(created=int(time.time()), data=data)


@bp.get("/v1/models")
def models():
    """Every model a request may name (``model``), the loaded one marked, in OpenAI's list shape."""
    listing = services().model_list(fresh=True)
    return jsonify(object="list", data=[model_item(m) for m in listing.models])


@bp.get("/v1/models/<path:name>")
def model(name: str):
    found = [m for m in services().model_list().models if m.name == name]
    if not found:
        raise ApiError(404, "model_not_found", f"no model {name[:200]!r}", "GET /v1/models lists them.",
                       field="model")
    return jsonify(model_item(found[0]))
