"""``GET /v1/capabilities``: what each model server can do on its host, measured there, not assumed:
per model, preset, mode and size the seconds per step and per image and the peak memory of the jobs
it ran (``model_server/jobs/speed.py``, kept per host), and what it cannot run and why. ``POST
/v1/capabilities/measure`` measures on demand: one job per preset the model can run, at its size,
as the caller's jobs (they spend the generate budget like any job). Deadlines (``deadline_seconds``)
are predicted from the same figures."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from flask import Blueprint, Response, jsonify, request
from msgspec import Meta

from gateway.errors import ApiError
from gateway.json_body import convert, decode_object
from gateway.policy import starts_work
from gateway.services import services
from gateway.waiting import start_job
from protocol.contract import field_of
from protocol.messages import Pong, SpeedEntry
from protocol.presets import PRESET_NAMES, PRESETS

bp = Blueprint("capabilities", __name__)
CALIBRATION_PROMPT = "a lighthouse on a cliff at sunset, calibration"
_EXAMPLE = 'Send {"presets": ["quality", "fast"]} or {} (every preset the model runs, at its size).'


def _speed(e: SpeedEntry) -> dict:
    return {"model": e.model, "preset": e.preset, "mode": e.mode, "size": f"{e.width}x{e.height}",
            "seconds_per_step": e.seconds_per_step, "steps": e.steps,
            "seconds_per_image": round(e.seconds_per_step * e.steps + e.seconds_per_image, 2),
            "peak_memory_bytes": e.peak_rss_bytes or None, "jobs_measured": e.jobs, "measured_at": e.measured_at}


def _server(name: str, pong: Pong) -> dict:
    return {"server": name, "host": msgspec.to_builtins(pong.host) if pong.host else None,
            "model_state": pong.model_state.value, "default_model": pong.default_model,
            "loaded_model": pong.loaded_model, "unavailable_presets": pong.unavailable_presets,
            "measured": [_speed(e) for e in pong.speeds],
            "peak_rss_bytes": pong.peak_rss_bytes, "available_bytes": pong.available_bytes}


@bp.get("/v1/capabilities")
def capabilities():
    views = services().client.servers(timeout=2.0)
    servers = [_server(v.name, v.pong) for v in views if v.alive and v.pong is not None]
    note = ("Figures come from the jobs each server ran on its host (plain jobs: no LoRAs, hires fix or face "
            "restoration), smoothed; none yet for what it has not run: POST /v1/capabilities/measure runs one job "
            "per preset.")
    return jsonify(servers=servers, note=note)


class MeasureRequest(msgspec.Struct, kw_only=True):
    """What to measure: presets (default: every one the model can run), and the model and size (its own)."""

    presets: Annotated[list[Literal[PRESET_NAMES]], Meta(min_length=1, max_length=len(PRESET_NAMES))] | None = None
    model: str | None = None
    width: int | None = None
    height: int | None = None


def _parse_measure():
    """One calibration job per preset asked for, each validated as any job."""
    try:
        r = convert(decode_object(request.get_data(cache=False), _EXAMPLE, empty_ok=True), MeasureRequest)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_params", f"invalid request: {exc}", f"Presets are some of: "
                       f"{', '.join(PRESET_NAMES)}. {_EXAMPLE}", field=field_of(str(exc))) from None
    sv = services()
    entry = sv.model_entry(r.model or "")
    presets = r.presets or [name for name in PRESET_NAMES if name not in (
        entry.unavailable_presets if entry is not None else {n for n in PRESETS if PRESETS[n].one_step})]
    fields = {key: getattr(r, key) for key in ("model", "width", "height") if getattr(r, key) is not None}
    return [sv.validator.parse_object({"prompt": CALIBRATION_PROMPT, "preset": name, "seed": 0, "task": "calibration",
                                       **fields}) for name in dict.fromkeys(presets)]


@bp.post("/v1/capabilities/measure")
@starts_work(_parse_measure)
def measure(generations):
    sv = services()
    jobs = [{"preset": g.params.preset, "size": f"{g.params.width}x{g.params.height}",
             "id": start_job(sv, g).job_id} for g in generations]
    body = {"jobs": jobs, "hint": "Each is a job of yours (GET /v1/jobs/<id>); GET /v1/capabilities shows their "
                                  "figures once they are done."}
    return Response(msgspec.json.encode(body), status=202, mimetype="application/json")
