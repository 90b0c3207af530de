"""Health endpoints: the seed's ``/health`` plus liveness and readiness for orchestrators."""

from __future__ import annotations

import time

import msgspec
from flask import Blueprint, jsonify

from gateway.errors import ApiError, as_api_error
from gateway.model_client import ModelServerUnavailable, RemoteError, ServerView
from gateway.policy import probe, public, unlimited
from gateway.presets_api import describe
from gateway.services import services
from protocol.messages import LoadStatus, ModelState

bp = Blueprint("health", __name__)
_PING_TIMEOUT = 2.0
_STATUS = {ModelState.READY: "ok", ModelState.LOADING: "loading", ModelState.STOPPING: "stopping",
           ModelState.FAILED: "error"}


@bp.get("/health/live")
@public
@unlimited
def live():
    """The gateway process answers; says nothing about the model (that is readiness)."""
    return jsonify(status="alive")


def load_view(load: LoadStatus | None) -> dict | None:
    """The load's phase as /health shows it: the model server's counters plus a percentage."""
    if load is None:
        return None
    view = msgspec.structs.asdict(load)
    if load.percent is not None:
        view["percent"] = load.percent
    return view


def _queue(servers: list[ServerView]) -> dict:
    """The queue over every server that answers: counts, never whose jobs."""
    pongs = [v.pong for v in servers if v.alive and v.pong is not None]
    return {"depth": sum(p.queue_depth for p in pongs), "capacity": sum(p.queue_capacity for p in pongs),
            "running": sum(p.running_job is not None for p in pongs)}


def _server(view: ServerView) -> dict:
    """One model server in /health: enough for an operator to see which one is down or busy."""
    pong = view.pong
    body = {"name": view.name, "alive": view.alive, "seconds_since_seen": view.seconds_since_seen}
    if pong is not None:
        body.update(server_id=pong.server_id, model=pong.model, loaded_model=pong.loaded_model,
                    model_state=pong.model_state.value,
                    queue_depth=pong.queue_depth, running=pong.running_job is not None,
                    rss_bytes=pong.rss_bytes, load=load_view(pong.load),
                    memory_budget_bytes=pong.memory_budget.budget_bytes or None if pong.memory_budget else None,
                    storage=msgspec.structs.asdict(pong.storage) if pong.storage else None)
    if view.error:
        body["error"] = view.error
    return body


def _storage_problems(servers: list[ServerView]) -> list[dict]:
    """Why /health says degraded: each live server whose outputs disk fails or is nearly full. Jobs
    still run (their images are served from memory), so readiness is unaffected."""
    return [{"server": view.name, "reason": view.pong.storage.reason,
             "hint": "Free space on the outputs disk or make OUTPUTS_DIR writable; new results are kept in memory "
                     "until then (docs/operations.md, 'A full disk')."}
            for view in servers if view.alive and view.pong is not None and view.pong.storage is not None
            and not view.pong.storage.ok]


@bp.get("/health/ready")
@probe
def ready():
    """Ready when at least one model server is (``ping`` prefers a ready one)."""
    pong = services().client.ping(timeout=_PING_TIMEOUT)
    if pong.model_state is not ModelState.READY:
        hint = pong.error.hint if pong.error else "Retry in a few seconds."
        message = pong.error.message if pong.error else f"the model is {pong.model_state.value}"
        err = ApiError(503, "not_ready", message, hint,
                       # Loading and stopping pass (a restart follows a stop); a failed load needs an operator.
                       retry_after=None if pong.model_state is ModelState.FAILED else 5.0)
        body = {**err.body(), "model_state": pong.model_state.value, "load": load_view(pong.load)}
        return jsonify(body), 503, err.headers()
    return jsonify(status="ready", model=pong.model)


def _memory_view(pong) -> dict:
    """The answering server's memory and the budget it keeps (jobs predicted over it are refused)."""
    out = {"rss_bytes": pong.rss_bytes, "peak_rss_bytes": pong.peak_rss_bytes, "available_bytes": pong.available_bytes}
    budget = pong.memory_budget
    if budget is not None:
        out.update(budget_bytes=budget.budget_bytes or None, budget_source=budget.source,
                   idle_bytes=budget.idle_bytes, resident_models=budget.resident)
    return out


@bp.get("/health")
@probe
def health():
    """The seed's shape (status, device, model, optimizations) plus queue, memory and state."""
    sv = services()
    started = time.monotonic()
    try:
        pong = sv.client.ping(timeout=_PING_TIMEOUT)  # the ready server that answers for the model, if any
        servers = sv.client.servers(timeout=_PING_TIMEOUT)
    except (ModelServerUnavailable, RemoteError) as exc:
        err = as_api_error(exc)
        return jsonify(status="unavailable", device="cpu", model=None, optimizations={},
                       model_state="unreachable", error=err.body()), 503, err.headers()
    storage = _storage_problems(servers)
    status = _STATUS[pong.model_state]
    body = {
        "status": "degraded" if status == "ok" and storage else status,
        "device": pong.device,
        "model": pong.model,
        "loaded_model": pong.loaded_model,  # the model in memory now (a job naming another loads it first)
        "optimizations": pong.optimizations,
        "model_state": pong.model_state.value,
        "queue": _queue(servers),
        "memory": _memory_view(pong),
        "load_seconds": pong.load_seconds,
        "load": load_view(pong.load),
        "uptime_seconds": pong.uptime_seconds,
        "schedulers": pong.schedulers,
        "default_preset": sv.settings.default_preset,
        "presets": describe(sv, pong),
        "limits": {"max_prompt_length": sv.settings.max_prompt_length, "max_steps": sv.settings.max_steps,
                   "max_width": sv.settings.max_width, "max_height": sv.settings.max_height,
                   "max_images": sv.settings.max_images, "default_steps": sv.settings.default_steps,
                   "default_size": sv.settings.default_size},
        "model_server_ping_ms": round((time.monotonic() - started) * 1000, 1),
        "servers": [_server(view) for view in servers],
    }
    if storage:
        body["degraded"] = storage
    if pong.error:
        body["error"] = {"error": pong.error.message, "code": pong.error.code.value, "hint": pong.error.hint}
    return jsonify(body), 503 if pong.model_state is ModelState.FAILED else 200
