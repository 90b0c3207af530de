"""Waiting for a job on behalf of a synchronous HTTP request.

Shared by every synchronous façade (/generate, and the OpenAI/A1111 routes). Liveness comes
from the watch stream: each event, heartbeats included, proves the model server alive, so a
dead server is noticed within the client's timeout while a slow job may run for as long as
``sync_timeout`` allows. If the HTTP client hangs up, its job is cancelled.
"""

from __future__ import annotations

import logging
import select
import socket
import time

from flask import Response, g, request

from gateway.auth import client_id
from gateway.errors import ApiError
from gateway.params import Generation
from gateway.resources import job_resource, to_json
from protocol.messages import Cancelled, Completed, ImageInfo, JobView

log = logging.getLogger(__name__)


class ClientGone(ApiError):
    """The HTTP client closed its connection while waiting (nobody reads this answer)."""

    def __init__(self):
        super().__init__(499, "client_closed_request", "the client closed the connection", "")


def client_disconnected(environ) -> bool:
    """True once the peer has closed the connection (gunicorn exposes the socket)."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True


def wait_for_job(client, job_id: str, timeout: float) -> JobView:
    """Block until the job is terminal; return its view or raise an ApiError for failures."""
    deadline = time.monotonic() + timeout
    environ = request.environ
    who = client_id()  # the submitter: its own job, whatever key role it has
    for event in client.watch(job_id, who):
        if isinstance(event, Completed):
            return event.job
        if isinstance(event, Cancelled) and not (event.job.error and event.job.error.retryable):
            raise ApiError(409, "cancelled", "the job was cancelled before it finished",
                           "Someone cancelled it (DELETE /v1/jobs/<id>); submit it again if needed.")
        if event.job.state.terminal:  # failed, or stopped by a shutdown (retryable)
            raise ApiError.from_info(event.job.error)
        if client_disconnected(environ):
            log.info("client went away; cancelling job %s", job_id)
            client.cancel(job_id, client_id=who)
            raise ClientGone()
        if time.monotonic() > deadline:
            client.cancel(job_id, client_id=who)
            raise ApiError(504, "timeout", f"the image was not ready within {timeout:g} s; the job was cancelled",
                           "Use fewer steps or a smaller size, or use the job API (POST /v1/jobs) for long work.")
    raise ApiError(503, "model_server_lost", "the job's event stream ended early", "Retry shortly.", 5.0)


def start_job(sv, generation: Generation) -> JobView:
    """Submit a job for the caller, who owns it from now on."""
    return sv.client.submit(generation.params, client_id=client_id(), request_id=g.request_id, **generation.uploads())


def accepted(sv, generation: Generation) -> Response:
    """Submit for the caller and answer at once: 202 with the job, its Location the job's URL."""
    view = start_job(sv, generation)
    return Response(to_json(job_resource(view)), status=202, mimetype="application/json",
                    headers={"Location": f"/v1/jobs/{view.job_id}"})


def generate_sync(sv, generation: Generation) -> tuple[JobView, list[tuple[ImageInfo, bytes]]]:
    """Submit, wait, fetch every image: the whole life of a synchronous request."""
    job = start_job(sv, generation)
    done = wait_for_job(sv.client, job.job_id, sv.settings.sync_timeout)
    return done, [sv.client.fetch(done.job_id, info.index, client_id()) for info in done.images]
