"""The job API: submit at once, then poll, stream (SSE), fetch or cancel that exact job."""

from __future__ import annotations

import json
import re
import time

from flask import Blueprint, Response, request, stream_with_context

from gateway.errors import ApiError, as_api_error
from gateway.model_client import ModelServerUnavailable, RemoteError
from gateway.auth import owner
from gateway.policy import starts_work, takes_images
from gateway.resources import job_resource, to_json
from gateway.services import services
from gateway.waiting import accepted
from protocol.messages import MAX_LISTED_JOBS, JobState

bp = Blueprint("jobs", __name__)
_EVENT_NAMES = {JobState.SUCCEEDED: "completed", JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(to_json(obj), status=status, mimetype="application/json", headers=headers)


def checked_job_id(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, "not_found", f"no job with id {job_id[:80]!r}", "Job ids are as POST /v1/jobs returned them.")
    return job_id


def _parse():
    return services().validator.parse_body()


@bp.post("/v1/jobs")
@starts_work(_parse)
@takes_images
def submit_job(generation):
    return accepted(services(), generation)


@bp.get("/v1/jobs")
def list_jobs():
    """The caller's jobs: unfinished ones (running first, then queued in order) and its ``limit`` (default 24, at most
    MAX_LISTED_JOBS) most recently finished ones still kept, newest first; ``state`` narrows to one of the two."""
    state = request.args.get("state", "")
    if state not in ("", "unfinished", "finished"):
        raise ApiError(400, "invalid_params", f"unknown state {state[:40]!r}", "Use state=unfinished or "
                       "state=finished, or leave it out for both.", field="state")
    try:
        limit = int(request.args.get("limit", "24"))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LISTED_JOBS:
        raise ApiError(400, "invalid_params", "limit must be a whole number from 1 to "
                       f"{MAX_LISTED_JOBS}", "Send limit=24, or leave it out.", field="limit")
    client, who = services().client, owner()
    jobs = client.unfinished_jobs(who) if state != "finished" else []
    jobs += client.finished_jobs(limit, who) if state != "unfinished" else []
    return Response(to_json({"jobs": [job_resource(v) for v in jobs]}), mimetype="application/json")


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    return _json(job_resource(services().client.get_job(checked_job_id(job_id), owner())))


@bp.delete("/v1/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel an unfinished job; delete a finished one's images and record."""
    client = services().client
    view = client.get_job(checked_job_id(job_id), owner())
    if view.state.terminal:
        view = client.delete(job_id, owner())
        return _json(job_resource(view), 200, {"X-Deleted": "true"})
    view = client.cancel(job_id, client_id=owner())
    # 202 while a running job is still on its way to the next step boundary.
    return _json(job_resource(view), 200 if view.state.terminal else 202)


@bp.get("/v1/jobs/<job_id>/image")
def job_image(job_id: str):
    sv = services()
    index = request.args.get("index", "0")
    if not index.isdigit():
        raise ApiError(400, "invalid_params", "index must be a whole number", "Use ?index=0 for the first image.")
    view = sv.client.get_job(checked_job_id(job_id), owner())
    if view.state is not JobState.SUCCEEDED:
        if view.state.terminal:
            raise ApiError(409, "job_" + view.state.value, f"job {job_id} {view.state.value}; it has no image",
                           view.error.hint if view.error else "Submit the job again.")
        eta = view.progress.eta_seconds if view.progress else None
        raise ApiError(409, "not_finished", f"job {job_id} is {view.state.value}; the image is not ready yet",
                       "Wait for the 'completed' event on /events, or poll the job.", retry_after=eta or 2.0)
    info, data = sv.client.fetch(job_id, int(index), owner())
    return Response(data, mimetype=info.media_type, headers={"X-Seed": str(info.seed), "X-Job-Id": job_id,
                                                            "Cache-Control": "private, max-age=3600"})


@bp.get("/v1/jobs/<job_id>/preview")
def job_preview(job_id: str):
    info, data = services().client.fetch_preview(checked_job_id(job_id), owner())
    return Response(data, mimetype=info.media_type, headers={"Cache-Control": "no-store"})


def _sse(event: str, data: bytes | str) -> str:
    if isinstance(data, bytes):
        data = data.decode()
    return f"event: {event}\ndata: {data}\n\n"


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    sv = services()
    who = owner()
    sv.client.get_job(checked_job_id(job_id), who)  # unknown, foreign or expired ids get a plain 404/410, not a stream
    keepalive = sv.settings.sse_keepalive_seconds

    def stream():
        yield "retry: 2000\n\n"
        last_key, last_sent = None, time.monotonic()
        # A server lost under the job: its stream waits (keepalives) until the job goes on elsewhere, its
        # server answers again, or it ends failed (MODEL_SERVER_LOST_SECONDS), then carries on.
        give_up = None
        while True:
            try:
                for event in sv.client.watch(job_id, who):
                    give_up = None
                    view = event.job
                    p = view.progress
                    # Everything a client can see change (not the clock): a model switch's phases
                    # (progress.detail) come before step 1.
                    key = (view.state, p.step if p else 0, p.image_index if p else 0, p.detail if p else "",
                           p.preview_step if p else None, view.queue_position, view.cancel_requested)
                    now = time.monotonic()
                    if key != last_key or view.state.terminal:
                        yield _sse(_EVENT_NAMES.get(view.state, "progress"), to_json(job_resource(view)))
                        last_key, last_sent = key, now
                    elif now - last_sent >= keepalive:
                        yield ": keepalive\n\n"
                        last_sent = now
                return
            except ModelServerUnavailable as exc:
                give_up = give_up or time.monotonic() + sv.settings.model_server_lost_seconds + 10
                if time.monotonic() >= give_up:
                    yield _sse("error", json.dumps(as_api_error(exc).body()))
                    return
                yield ": waiting for the job's model server\n\n"
                time.sleep(1.0)
            except RemoteError as exc:
                yield _sse("error", json.dumps(as_api_error(exc).body()))
                return

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
