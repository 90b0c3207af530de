"""``GET /v1/presets``: the speed/quality presets, what each sets, and whether this server can run it."""

from __future__ import annotations

import msgspec
from flask import Blueprint, jsonify

from gateway.errors import as_api_error
from gateway.model_client import ModelServerUnavailable, RemoteError
from gateway.services import Services, services
from protocol.messages import Pong

bp = Blueprint("presets", __name__)


def describe(sv: Services, pong: Pong | None) -> list[dict]:
    """Each preset with its settings; ``available`` is None while the model server is unknown."""
    unavailable = pong.unavailable_presets if pong else {}
    known = pong is not None and bool(pong.schedulers)  # schedulers are listed once the model is loaded
    # Every field of the preset, so the listing cannot fall behind protocol/presets.py.
    return [{**msgspec.structs.asdict(p), "default": p.name == sv.settings.default_preset,
             "available": (p.name not in unavailable) if known else None,
             **({"unavailable_reason": unavailable[p.name]} if p.name in unavailable else {})}
            for p in sv.validator.presets.values()]


@bp.get("/v1/presets")
def list_presets():
    sv = services()
    try:
        pong = sv.client.ping(timeout=2.0)
    except (ModelServerUnavailable, RemoteError) as exc:
        pong = None
        hint = as_api_error(exc).hint
    body = {"default": sv.settings.default_preset, "presets": describe(sv, pong)}
    if pong is None:
        body["note"] = f"The model server did not answer, so availability is unknown. {hint}"
    return jsonify(body)
