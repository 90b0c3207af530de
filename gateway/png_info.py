"""Reading the settings a PNG was made with: the ``parameters`` text chunk A1111, this server and most
Stable Diffusion tools write (A1111's "infotext"), turned back into request fields.

``POST /v1/png-info`` answers with the text and our fields (the page's "Read settings from a PNG");
``POST /sdapi/v1/png-info`` as A1111's (``info``, ``items``, ``parameters``). The PNG is read as the
hostile upload it may be: only its chunk headers are walked (no image is decoded, the gateway has no
imaging library), text chunks are bounded, a compressed one is inflated to a bound.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import PurePath

import msgspec
from flask import Blueprint, jsonify, request

from gateway.a1111_names import SAMPLERS
from gateway.errors import ApiError
from gateway.json_body import convert, decode_object
from gateway.model_client import ModelServerUnavailable, RemoteError
from gateway.policy import takes_images
from gateway.services import services

bp = Blueprint("png_info", __name__)
a1111_bp = Blueprint("a1111_png_info", __name__, url_prefix="/sdapi/v1")  # errors in A1111's shape
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 64 * 1024  # an infotext is a few hundred bytes; a chunk larger than this is not one
# A1111's "Key: value" pairs, a value quoted when it holds commas ("Lora hashes: "a: 1, b: 2"").
_PAIR = re.compile(r'\s*([\w ()\-/]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_EXAMPLE = 'Send {"image": "<base64 PNG>"}, or the PNG as the multipart file field "image".'


def read_parameters(data: bytes) -> str | None:
    """The PNG's ``parameters`` text (tEXt, zTXt or iTXt), or None; an ApiError when it is no PNG."""
    if not data.startswith(_SIGNATURE):
        raise ApiError(400, "invalid_image", "the file is not a PNG", "Send a PNG made by this server or A1111.",
                       field="image")
    at = len(_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        at += 12 + length
        if kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt") or length > MAX_TEXT:
            continue
        keyword, _, rest = body.partition(b"\0")
        if keyword != b"parameters":
            continue
        try:
            if kind == b"tEXt":
                return rest.decode("latin-1")
            if kind == b"zTXt":
                return zlib.decompressobj().decompress(rest[1:], MAX_TEXT).decode("latin-1")
            compressed, rest = rest[0], rest[2:]  # iTXt: flag, method, language\0, translated keyword\0, text
            text = rest.split(b"\0", 2)[-1]
            return (zlib.decompressobj().decompress(text, MAX_TEXT) if compressed else text).decode("utf-8")
        except (zlib.error, UnicodeDecodeError, IndexError):
            return None
    return None


def parse_infotext(text: str) -> dict:
    """A1111's infotext as {"prompt", "negative_prompt", and each "Key": "value" of its last line}."""
    lines = text.strip().split("\n")
    settings = lines.pop() if lines and _PAIR.match(lines[-1]) and "Steps:" in lines[-1] else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out = {"prompt": "\n".join(prompt).strip(), "negative_prompt": "\n".join(negative).strip()}
    for key, value in _PAIR.findall(settings):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            value = value[1:-1].replace('\\"', '"')
        out[key.strip()] = value
    return out


def _number(value: str | None, kind=float):
    try:
        return kind(value) if value not in (None, "") else None
    except ValueError:
        return None


def to_fields(info: dict) -> dict:
    """Our request fields from a parsed infotext (what is there and means something here)."""
    fields = {"prompt": info.get("prompt") or None, "negative_prompt": info.get("negative_prompt") or None,
              "steps": _number(info.get("Steps"), int), "guidance_scale": _number(info.get("CFG scale")),
              "seed": _number(info.get("Seed"), int), "model": info.get("Model")}
    size = re.fullmatch(r"(\d+)x(\d+)", info.get("Size", ""))
    if size:
        fields.update(width=int(size.group(1)), height=int(size.group(2)))
    sampler = SAMPLERS.get(info.get("Sampler", ""))
    if sampler:
        fields["scheduler"] = sampler[0]
    if info.get("Denoising strength") and not info.get("Hires upscale") and not info.get("Hires resize"):
        fields["strength"] = _number(info["Denoising strength"])
    return {key: value for key, value in fields.items() if value is not None}


class PngInfoRequest(msgspec.Struct, kw_only=True):
    image: str = ""


def _png() -> bytes:
    sv = services()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        data = sv.validator.checked_upload(upload.read(), "image") if upload else b""
    else:
        try:
            r = convert(decode_object(request.get_data(cache=False), _EXAMPLE), PngInfoRequest)
        except msgspec.ValidationError as exc:
            raise ApiError(400, "invalid_params", f"invalid request: {exc}", _EXAMPLE, field="image") from None
        data = sv.validator.decoded_upload(r.image, "image")
    if not data:
        raise ApiError(400, "invalid_params", "image is required", _EXAMPLE, field="image")
    return data


def _listed_model(written: str) -> str | None:
    """The listed model an infotext's "Model" means (its name, source or file name), or None."""
    try:
        models = services().model_list().models
    except (ModelServerUnavailable, RemoteError):  # no server answers: the other fields are still worth having
        return None
    for m in models:
        if written in (m.name, m.source) or PurePath(m.source).name == written or PurePath(written).name == m.name:
            return m.name
    return None


@bp.post("/v1/png-info")
@takes_images
def png_info():
    """The PNG's infotext and the request fields it gives (none when it has no infotext); a model this
    server does not list is left out."""
    text = read_parameters(_png())
    fields = to_fields(parse_infotext(text)) if text else {}
    if "model" in fields:
        model = _listed_model(fields.pop("model"))
        if model:
            fields["model"] = model
    return jsonify(infotext=text, params=fields)


@a1111_bp.post("/png-info")
@takes_images
def a1111_png_info():
    """A1111's shape: ``info`` (the text), ``items`` (the PNG's text chunks we read), ``parameters`` (parsed)."""
    text = read_parameters(_png())
    parsed = parse_infotext(text) if text else {}
    parameters = {("Prompt" if k == "prompt" else "Negative prompt" if k == "negative_prompt" else k): v
                  for k, v in parsed.items()}
    return jsonify(info=text or "", items={"parameters": text} if text else {}, parameters=parameters)
