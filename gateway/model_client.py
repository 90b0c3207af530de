"""The gateway's side of the ZMQ protocol: one DEALER socket per thread, every receive bounded.

gunicorn's gthread workers serve requests on many threads and ZMQ sockets are not
thread-safe, so each thread gets its own socket (and each forked worker its own context).
After a timeout the socket is thrown away and a fresh one made on next use (zguide's Lazy
Pirate), so a late reply can never be mistaken for the answer to a later request; replies also
echo a per-request number, and anything else is dropped.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from typing import Iterator, Protocol

import zmq

from protocol import codec
from common.curve import CurveKeys
from protocol.errors import ErrorCode, ProtocolError
from protocol.messages import (TERMINAL_EVENTS, Cancel, Delete, ErrorInfo, FetchPreview, FetchResult, GenerationParams,
                               GetJob, ImageInfo, JobView, ListJobs, ListModels, ModelList, Ping, Pong, Rejected,
                               Release, StopMode, Submit, Watch, Working)

log = logging.getLogger(__name__)
# The longest a reply may be put off by `Working` (a Submit's uploads waiting to be decoded): a full
# queue of the largest uploads takes well under this; a peer that says it forever is a dead one.
WORKING_LIMIT = 120.0


class ModelServerUnavailable(Exception):
    """The model server did not answer in time (down, restarting or wedged). ``sent`` says whether
    the request left: one that never did may safely go to another server."""

    def __init__(self, message: str, sent: bool = True):
        super().__init__(message)
        self.sent = sent
        self.error = ErrorInfo(
            code=ErrorCode.MODEL_SERVER_LOST, message=message, retryable=True, retry_after=5.0,
            hint="The model server is not answering; it may be starting or restarting. Retry shortly.")


class RemoteError(Exception):
    """The model server answered with an error (Rejected)."""

    def __init__(self, error: ErrorInfo):
        super().__init__(error.message)
        self.error = error


@dataclasses.dataclass
class ServerView:
    """One model server as the gateway last saw it: its address, its latest Pong (None if it never
    answered), whether it is in the rotation, and how long ago it last answered."""

    address: str
    pong: Pong | None
    alive: bool
    seconds_since_seen: float | None = None
    error: str = ""

    @property
    def name(self) -> str:
        """How /health and /metrics name it: host:port, or an ipc socket's file name."""
        scheme, _, rest = self.address.partition("://")
        return rest.rsplit("/", 1)[-1] if scheme == "ipc" else rest


class ModelServerClient(Protocol):
    """What the gateway needs from a model server. ``ModelClient`` speaks the real protocol; the
    tests' fake implements the same, and tests/gateway/test_model_client_conformance.py runs one
    set of checks against both, so the fake cannot drift from the real thing."""

    def ping(self, timeout: float | None = None) -> Pong: ...

    def servers(self, timeout: float | None = None) -> list[ServerView]: ...

    def submit(self, params: GenerationParams, client_id: str = "", request_id: str = "",
               init_image: bytes = b"", mask: bytes = b"", mask_from: str = "luminance",
               control_images: tuple[bytes, ...] = (), control_masks: tuple[bytes, ...] = ()) -> JobView: ...

    def get_job(self, job_id: str, client_id: str = "") -> JobView: ...

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, client_id: str = "") -> JobView: ...

    def delete(self, job_id: str, client_id: str = "") -> JobView: ...

    def unfinished_jobs(self, client_id: str = "") -> list[JobView]: ...

    def task_jobs(self, task: str, client_id: str = "") -> list[JobView]:
        """The client's jobs labelled ``task`` (GenerationParams.task), finished ones still kept too."""

    def finished_jobs(self, limit: int, client_id: str = "") -> list[JobView]:
        """The client's ``limit`` most recently finished jobs still kept, newest first."""

    def list_models(self, timeout: float | None = None, answering_only: bool = False) -> ModelList:
        """The models and LoRAs a job may name (every server of a fleet is configured alike).
        ``answering_only``: ask only servers that answered their latest heartbeat, and fail at once when
        none did (a lookup that must never slow a request down; a lone client has no heartbeat: it asks)."""

    def fetch(self, job_id: str, index: int = 0, client_id: str = "") -> tuple[ImageInfo, bytes]: ...

    def fetch_preview(self, job_id: str, client_id: str = "") -> tuple[ImageInfo, bytes]: ...

    def watch(self, job_id: str, client_id: str = "") -> Iterator: ...


class ProcessContext:
    """One ZMQ context per process for many clients (a fleet's): dropping a client never tears down
    sockets other threads still hold (destroying a context under them is not thread-safe), and a
    server coming and going costs sockets, not an IO thread each."""

    def __init__(self):
        self._ctx, self._pid, self._lock = None, None, threading.Lock()

    def get(self) -> zmq.Context:
        with self._lock:
            if self._pid != os.getpid():
                self._ctx, self._pid = zmq.Context(), os.getpid()
            return self._ctx

    def destroy(self) -> None:
        with self._lock:
            if self._ctx is not None and self._pid == os.getpid():
                self._ctx.destroy(linger=0)
            self._ctx, self._pid = None, None


class ModelClient:
    """The real model client: one DEALER socket per thread, every receive bounded (see the module)."""

    def __init__(self, address: str, timeout: float = 5.0, connect_timeout: float = 1.0,
                 working_limit: float = WORKING_LIMIT, curve: CurveKeys | None = None,
                 shared: "ProcessContext | None" = None):
        self.address = address
        self.curve = curve
        self._shared = shared  # a context shared with other clients (a fleet's), else one of its own
        self.timeout = timeout
        self.working_limit = working_limit
        self.connect_timeout = connect_timeout
        self._local = threading.local()
        self._refs = itertools.count(1)
        self._pid = None
        self._ctx = None

    # --- sockets -----------------------------------------------------------------------

    def _context(self) -> zmq.Context:
        if self._pid != os.getpid():  # a forked gunicorn worker must not share its parent's context
            ctx = self._shared.get() if self._shared is not None else zmq.Context()
            self._ctx, self._pid, self._local = ctx, os.getpid(), threading.local()
        return self._ctx

    def _socket(self) -> zmq.Socket:
        ctx = self._context()
        sock = getattr(self._local, "socket", None)
        if sock is None:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Queue nothing for a peer that is not connected: a send fails fast instead.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if self.curve is not None:  # CurveZMQ: the server must hold the key we expect, and know ours
                self.curve.apply_client(sock)
            sock.connect(self.address)
            self._local.socket = sock
        return sock

    def close(self) -> None:
        """Close this thread's socket and the context (tests; a gateway worker just exits)."""
        self._reset()
        if self._ctx is not None and self._pid == os.getpid() and self._shared is None:
            self._ctx.destroy(linger=0)
            self._ctx, self._pid = None, None

    def _reset(self) -> None:
        sock = getattr(self._local, "socket", None)
        if sock is not None:
            sock.close(linger=0)
            self._local.socket = None

    def _send(self, body) -> int:
        sock, ref = self._socket(), next(self._refs)
        if not sock.poll(int(self.connect_timeout * 1000), zmq.POLLOUT):
            self._reset()
            raise ModelServerUnavailable(f"cannot reach the model server at {self.address}", sent=False)
        try:
            sock.send_multipart(codec.encode(body, ref), flags=zmq.NOBLOCK)
        except zmq.Again:
            # The peer went away between the poll and the send (a model server killed under load):
            # the same outage as a failed poll, not a gateway error.
            self._reset()
            raise ModelServerUnavailable(f"lost the model server at {self.address} while sending", sent=False) from None
        return ref

    def _receive(self, ref: int, timeout: float | None = None):
        sock = self._socket()
        wait = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                self._reset()
                raise ModelServerUnavailable(f"the model server did not answer within {wait:g} s")
            try:
                envelope, blobs = codec.decode(sock.recv_multipart())
            except ProtocolError as exc:
                self._reset()
                raise RemoteError(ErrorInfo(code=exc.code, message=str(exc),
                                            hint="Gateway and model server versions differ; deploy them together."))
            if envelope.ref not in (ref, 0):
                continue  # a stale reply to an abandoned request
            if isinstance(envelope.body, Working):
                # Alive and on it: the deadline starts again, but no peer keeps a thread waiting forever.
                deadline = min(time.monotonic() + wait, started + wait + self.working_limit)
                continue
            if isinstance(envelope.body, Rejected):
                raise RemoteError(envelope.body.error)
            return envelope.body, blobs

    def call(self, body, timeout: float | None = None):
        return self._receive(self._send(body), timeout)

    # --- the protocol's requests ---------------------------------------------------------
    # ``client_id`` on a job request is who acts: the model server answers "not found" for
    # another client's job. "" (an admin key) may act on every job.

    def ping(self, timeout: float | None = None) -> Pong:
        return self.call(Ping(), timeout)[0]

    def servers(self, timeout: float | None = None) -> list[ServerView]:
        try:
            return [ServerView(self.address, self.ping(timeout), True, 0.0)]
        except (ModelServerUnavailable, RemoteError) as exc:
            return [ServerView(self.address, None, False, None, str(exc))]

    def submit(self, params: GenerationParams, client_id: str = "", request_id: str = "",
               init_image: bytes = b"", mask: bytes = b"", mask_from: str = "luminance",
               control_images: tuple[bytes, ...] = (), control_masks: tuple[bytes, ...] = ()) -> JobView:
        return self.send_submit(Submit(params=params, client_id=client_id, request_id=request_id,
                                       init_image=init_image, mask=mask, mask_from=mask_from,
                                       control_images=list(control_images),
                                       control_masks=list(control_masks)))

    def send_submit(self, submit: Submit) -> JobView:
        return self.call(submit)[0].job

    def get_job(self, job_id: str, client_id: str = "") -> JobView:
        return self.call(GetJob(job_id=job_id, client_id=client_id))[0].job

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, client_id: str = "") -> JobView:
        return self.call(Cancel(job_id=job_id, mode=mode, client_id=client_id))[0].job

    def delete(self, job_id: str, client_id: str = "") -> JobView:
        return self.call(Delete(job_id=job_id, client_id=client_id))[0].job

    def release(self, job_id: str, client_id: str = "") -> JobView:
        """Take a queued job back from a stopping server (see protocol ``Release``)."""
        return self.call(Release(job_id=job_id, client_id=client_id))[0].job

    def unfinished_jobs(self, client_id: str = "") -> list[JobView]:
        """The client's running job, then its queued ones in order."""
        return self.call(ListJobs(client_id=client_id))[0].jobs

    def task_jobs(self, task: str, client_id: str = "") -> list[JobView]:
        return self.call(ListJobs(client_id=client_id, task=task))[0].jobs

    def finished_jobs(self, limit: int, client_id: str = "") -> list[JobView]:
        return self.call(ListJobs(client_id=client_id, finished=limit))[0].jobs

    def listing(self, timeout: float | None = None) -> tuple[list[JobView], list[str]]:
        """Every unfinished job, running first then queued in order, and each one's owner (a
        gateway's own view of the server, for when it is lost)."""
        reply = self.call(ListJobs(client_id=""), timeout)[0]
        return reply.jobs, reply.owners

    def list_models(self, timeout: float | None = None, answering_only: bool = False) -> ModelList:
        return self.call(ListModels(), timeout)[0]

    def fetch(self, job_id: str, index: int = 0, client_id: str = "") -> tuple[ImageInfo, bytes]:
        reply, blobs = self.call(FetchResult(job_id=job_id, index=index, client_id=client_id))
        return reply.image, blobs[0]

    def fetch_preview(self, job_id: str, client_id: str = "") -> tuple[ImageInfo, bytes]:
        reply, blobs = self.call(FetchPreview(job_id=job_id, client_id=client_id))
        return reply.image, blobs[0]

    def watch(self, job_id: str, client_id: str = "") -> Iterator:
        """Yield Progress events, then the terminal one (Completed, Failed or Cancelled).

        Each event must arrive within the timeout (the server sends one at least every
        heartbeat). Closing the iterator early drops the socket so the rest of the stream
        cannot leak into the next request on this thread.
        """
        ref = self._send(Watch(job_id=job_id, client_id=client_id))
        finished = False
        try:
            while True:
                event, _ = self._receive(ref)
                yield event
                if isinstance(event, TERMINAL_EVENTS):
                    finished = True
                    return
        finally:
            if not finished:
                self._reset()
