"""ControlNet on the native API: ``GET /v1/controlnets`` lists the ControlNets a control unit may name
and the preprocessors (modules) with their settings; ``POST /v1/detect`` runs one preprocessor on an
image as a job (no model: the map a unit would make, to look at before generating). The units
themselves are ``controls`` on ``/v1/jobs`` and ``/generate`` (gateway/params.py)."""

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
from protocol.control import MODULES, UNSUPPORTED_MODULES, Slider, runnable
from protocol.messages import IMAGE_FORMATS, MAX_CONTROL_THRESHOLD, MAX_SIZE, ControlUnit

bp = Blueprint("controlnet", __name__)
_EXAMPLE = 'Send {"image": "<base64 PNG>", "module": "canny"} (GET /v1/controlnets lists the modules).'


class DetectRequest(msgspec.Struct, kw_only=True):
    """One preprocessor on one image."""

    image: Annotated[str, Meta(description="The image, base64 (a data: URL too): PNG, JPEG or WebP.")] | None = None
    module: Annotated[str, Meta(description="A preprocessor from GET /v1/controlnets (default canny).")] = "canny"
    processor_res: Annotated[int, Meta(ge=64, le=MAX_SIZE, description="The side it works at (default 512).")] = 512
    threshold_a: Annotated[float, Meta(ge=-1, le=MAX_CONTROL_THRESHOLD,
                                       description="Its first setting (-1: its default).")] = -1.0
    threshold_b: Annotated[float, Meta(ge=-1, le=MAX_CONTROL_THRESHOLD,
                                       description="Its second setting (-1: its default).")] = -1.0
    format: Literal[IMAGE_FORMATS] = "png"


def _parse() -> Generation:
    sv = services()
    try:
        r = convert(decode_object(request.get_data(cache=False), _EXAMPLE), DetectRequest)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_params", f"invalid request: {exc}", _EXAMPLE, field=field_of(str(exc))) from None
    unit = ControlUnit(module=r.module, processor_res=r.processor_res, threshold_a=r.threshold_a,
                       threshold_b=r.threshold_b)
    return sv.validator.detect(sv.validator.decoded_upload(r.image, "image"), unit, r.format)


@bp.post("/v1/detect")
@starts_work(_parse)
@takes_images
def detect(generation):
    return accepted(services(), generation)


def slider(s: Slider | None) -> dict | None:
    return None if s is None else {"name": s.name, "value": s.value, "min": s.min, "max": s.max, "step": s.step}


@bp.get("/v1/controlnets")
def list_controlnets():
    """The ControlNets and IP-Adapters in CONTROLNET_DIR (each with the family it steers) and the preprocessors."""
    listing = services().model_list(fresh=True)
    runs = set(runnable(listing.annotator_modules))
    modules = [{"name": name, "title": m.title, "available": name in runs, "annotator": m.annotator or None,
                "threshold_a": slider(m.a), "threshold_b": slider(m.b), "needs_mask": m.needs_mask}
               for name, m in MODULES.items()]
    modules += [{"name": name, "title": "not run by this server (send a map made elsewhere with module none)",
                 "available": False, "annotator": None, "threshold_a": None, "threshold_b": None,
                 "needs_mask": False} for name in UNSUPPORTED_MODULES]
    return jsonify(controlnets=[{"name": c.name, "kind": c.kind, "family": c.family or None, "file": c.file,
                                 "size_bytes": c.size_bytes, "loaded": c.loaded} for c in listing.controlnets],
                   modules=modules)
