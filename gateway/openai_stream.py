"""OpenAI's streamed image responses (``stream: true``) for ``/v1/images/generations`` and ``/edits``.

As the OpenAI API streams them: server-sent events ``image_generation.partial_image`` (``image_edit.*``
for edits), up to ``partial_images`` (0-3) of them, then one ``image_generation.completed`` per image,
each with its ``b64_json``, size, format, background, ``created_at``, and usage on the completed ones
(no tokens are counted here: zeros). The partial images are the job's step previews
(latent-resolution JPEGs, the size they are), taken at even shares of the run, so the ``openai``
SDK's ``stream=True`` iterates them as it does OpenAI's. An error after the stream began is an
``error`` event (``{"type": "error", "error": {...}}``), which the SDK raises; a client that goes
away cancels its job.
"""

from __future__ import annotations

import base64
import json
import logging
import time

from flask import Response, request, stream_with_context

from gateway.auth import client_id
from gateway.errors import ApiError, as_api_error
from gateway.model_client import ModelServerUnavailable, RemoteError
from gateway.resources import steps_done
from gateway.waiting import client_disconnected, start_job
from protocol.messages import Cancelled, Completed, JobView

log = logging.getLogger(__name__)
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound
_QUALITIES = {"low", "medium", "high", "auto"}  # what the events may say; DALL-E 3's standard/hd are "auto"
_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
          "total_tokens": 0}


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"


def shares(partial_images: int) -> list[float]:
    """The share of the run after which each partial image is sent: evenly spread, the last before the end."""
    return [(i + 1) / (partial_images + 1) for i in range(partial_images)]


def _done_share(view: JobView) -> float:
    done, total = steps_done(view)
    return done / total


def stream_images(sv, generation, partial_images: int, prefix: str, quality: str | None,
                  error_body) -> Response:
    """Start the job and answer with its events; ``prefix`` "image_generation" or "image_edit";
    ``error_body(ApiError)`` is the OpenAI error object."""
    job = start_job(sv, generation)
    who = client_id()
    environ = request.environ
    common = {"background": "opaque", "quality": quality if quality in _QUALITIES else "auto"}
    keepalive = sv.settings.sse_keepalive_seconds
    deadline = time.monotonic() + sv.settings.sync_timeout

    def stream():
        sent, ended = 0, False
        due = shares(partial_images)
        last_sent = time.monotonic()
        try:
            for event in sv.client.watch(job.job_id, who):
                view = event.job
                if isinstance(event, Completed):
                    for info in view.images:
                        _, data = sv.client.fetch(job.job_id, info.index, who)
                        yield _event(f"{prefix}.completed", {
                            "b64_json": base64.b64encode(data).decode("ascii"), "created_at": int(time.time()),
                            "size": f"{info.width}x{info.height}", "output_format": info.media_type.split("/")[1],
                            "usage": _USAGE, **common})
                    ended = True
                    return
                if isinstance(event, Cancelled) or view.state.terminal:
                    ended = True
                    error = (ApiError(409, "cancelled", "the job was cancelled before it finished",
                                      "Someone cancelled it (DELETE /v1/jobs/<id>); submit it again if needed.")
                             if isinstance(event, Cancelled) and not (view.error and view.error.retryable)
                             else ApiError.from_info(view.error))
                    yield _event("error", error_body(error))
                    return
                p = view.progress
                if sent < len(due) and p is not None and p.preview_step and _done_share(view) >= due[sent]:
                    info, data = sv.client.fetch_preview(job.job_id, who)
                    yield _event(f"{prefix}.partial_image", {
                        "b64_json": base64.b64encode(data).decode("ascii"), "partial_image_index": sent,
                        "created_at": int(time.time()), "size": f"{info.width}x{info.height}",
                        "output_format": "jpeg", **common})
                    sent, last_sent = sent + 1, time.monotonic()
                elif time.monotonic() - last_sent >= keepalive:
                    yield ": keepalive\n\n"  # a client that left is noticed at the latest here
                    last_sent = time.monotonic()
                if client_disconnected(environ):
                    return
                if time.monotonic() > deadline:
                    yield _event("error", error_body(ApiError(
                        504, "timeout", "the image was not ready within the synchronous time limit; the job was "
                        "cancelled", "Use fewer steps or a smaller size, or the job API (POST /v1/jobs).")))
                    return
        except (RemoteError, ModelServerUnavailable) as exc:
            ended = isinstance(exc, RemoteError)
            yield _event("error", error_body(as_api_error(exc)))
        finally:
            if not ended:  # the client left, the stream broke or the time ran out: nobody will read the image
                log.info("stream ended before its job; cancelling job %s", job.job_id)
                try:
                    sv.client.cancel(job.job_id, client_id=who)
                except (RemoteError, ModelServerUnavailable):
                    pass

    return Response(stream_with_context(stream()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Job-Id": job.job_id})
