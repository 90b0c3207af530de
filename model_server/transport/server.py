"""The model server's IO side: one ROUTER socket, owned by one thread.

Answers pings, status and cancels at once, even mid-generation (the worker thread runs the
pipeline), streams job events to watchers, sends heartbeats so a gateway can tell a slow step
from a dead server, and shuts down gracefully.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from model_server import errors, memory
from model_server.errors import Rejection
from model_server.jobs import admission, deadlines
from model_server.jobs.job import Job
from model_server.jobs.outputs import JOB_ID, OutputStore
from model_server.jobs.table import JobTable
from model_server.logs import job_context
from model_server.pipeline import Pipeline
from model_server.settings import ModelServerSettings
from model_server.transport.decoding import DECODED_ADDRESS, Pending, UploadDecoder
from model_server.webhooks.dispatcher import Dispatcher
from model_server.webhooks.outbox import Outbox
from model_server.webhooks.sender import Sender
from model_server.webhooks.signing import secret_bytes
from model_server.worker import EVENTS_ADDRESS, ModelStatus, Worker
from protocol import codec, transport
from protocol.errors import ProtocolError
from protocol.messages import (Accepted, Cancel, Cancelled, Completed, Delete, Failed, FetchPreview, JobMemory,
                               FetchResult, GetJob, ImageInfo, JobInfo, JobList, JobState, ListJobs, ListModels,
                               ModelState, Ping, Pong, Progress, Rejected, Release, Result, Submit, Watch, Working,
                               has_uploads)

log = logging.getLogger(__name__)
_HANDOFF_SECONDS = 5.0  # how long a stopping server keeps its queued jobs for gateways to take back
REQUEUE_HOLD_SECONDS = 3.0  # after a restart, no requeued job starts sooner (Worker.hold_until)
AWAIT_UPLOADS_SECONDS = 30.0  # after the model is ready, how long a job waits for its gateway to resend its images
_TERMINAL = {JobState.SUCCEEDED: Completed, JobState.FAILED: Failed, JobState.CANCELLED: Cancelled}


class _Allowed:
    """pyzmq's credentials provider shape, asking ``CurveKeys.allows``."""

    def __init__(self, curve):
        self.callback = curve.allows


class ModelServer:
    """The model server: binds the ROUTER socket, answers every request on its IO thread, streams
    job events to watchers, and runs the worker thread that owns the pipeline."""

    def __init__(self, settings: ModelServerSettings, load: Callable[[], Pipeline] | None = None,
                 ctx: zmq.Context | None = None):
        """``load`` builds the pipeline in the worker thread (default: the configured one)."""
        self.settings = settings
        self._owns_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        # An OUTPUTS_DIR that cannot be written raises StorageUnusable (a configuration error, exit 2).
        store = OutputStore(settings.outputs_folder, settings.outputs_budget_bytes,
                            peers=settings.outputs_peers) if settings.outputs_dir else None
        self.table = JobTable(settings.queue_size, settings.result_ttl_seconds, settings.result_budget_bytes,
                              per_client=settings.max_queued_per_client, store=store,
                              min_free_disk_bytes=settings.min_free_disk_mb * 2**20)
        self.state = ModelStatus(model=settings.model)
        self.worker = Worker(settings, self.table, self.state, self.ctx, load)
        self.decoder = UploadDecoder(settings, self.ctx)
        self._watchers: dict[str, set[tuple[bytes, int]]] = {}
        self._shutdown = threading.Event()
        self._started = time.monotonic()
        requeued = self.table.requeue(self.table.records.recover())
        self.webhooks = self._webhooks(store)
        self._awaiting = any(job.awaiting_uploads for job in requeued)
        self._ready_at: float | None = None
        if requeued:
            self.worker.hold_until = self._started + REQUEUE_HOLD_SECONDS
            log.info("%d job(s) queued when the model server stopped, never started, are queued again (or wait "
                     "for their gateway to send their images again): %s", len(requeued),
                     ", ".join(job.id for job in requeued))
        self.router: zmq.Socket | None = None
        self._authenticator: ThreadAuthenticator | None = None
        self.bound_address: str | None = None

    def _webhooks(self, store: OutputStore | None) -> Dispatcher | None:
        """The webhook thread, when WEBHOOK_ALLOWED_HOSTS is set; the outbox kept beside the records."""
        s = self.settings
        if not s.webhook_hosts.enabled:
            return None
        outbox = Outbox(store.folder if store else None, s.result_ttl_seconds)
        if store is not None:
            outbox.owe_missing(store.ended_since(time.time() - s.result_ttl_seconds))
        self.table.webhooks = outbox
        sender = Sender(secret_bytes(s.webhook_secret), s.webhook_hosts, s.webhook_timeout_seconds)
        return Dispatcher(outbox, sender, s.webhook_retry_seconds, self.table.stats)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "ModelServer":
        """Bind the sockets (so pings answer "loading" at once), then start loading the model."""
        self._events = self.ctx.socket(zmq.PULL)
        self._events.bind(EVENTS_ADDRESS)
        self._decoded = self.ctx.socket(zmq.PULL)
        self._decoded.bind(DECODED_ADDRESS)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 1000)
        # A frame larger than any legal request disconnects its sender before it is read into memory.
        self.router.setsockopt(zmq.MAXMSGSIZE, codec.largest_request_bytes(self.settings.max_upload_bytes))
        curve = self.settings.curve
        if curve is not None:
            # libzmq asks the ZAP handler (this thread) about every CURVE handshake: only the
            # gateways' public keys in the directory get in; anyone else never reaches _handle.
            self._authenticator = ThreadAuthenticator(self.ctx)
            self._authenticator.start()
            self._authenticator.configure_curve_callback(domain="*", credentials_provider=_Allowed(curve))
            curve.apply_server(self.router)
        transport.prepare_bind(self.settings.bind)
        self.router.bind(self.settings.bind)
        self.bound_address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        log.info("model server listening on %s", self.bound_address)
        self.worker.start()
        self.decoder.start()
        if self.webhooks is not None:
            self.webhooks.start()
        return self

    def request_shutdown(self) -> None:
        """Safe to call from a signal handler: the IO loop does the work."""
        self._shutdown.set()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._events, zmq.POLLIN)
        poller.register(self._decoded, zmq.POLLIN)
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        grace_deadline = None
        while True:
            timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000))
            for sock, _ in poller.poll(min(timeout_ms, 200)):
                if sock is self.router:
                    self._handle(self.router.recv_multipart(copy=False))
                elif sock is self._decoded:
                    self._decoded.recv()
                    self._queue_decoded(self.decoder.finished())
                else:
                    self._publish(self._events.recv_string())
            if time.monotonic() >= next_beat:
                self._heartbeat()
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
            if self._shutdown.is_set():
                if grace_deadline is None:
                    grace_deadline = self._begin_shutdown()
                if self._shutdown_finished(grace_deadline):
                    break
        self._close()

    def _begin_shutdown(self) -> float:
        # Queued jobs wait a moment: gateways that see "stopping" in their next heartbeat (one a
        # second) take theirs back to place on another server (Release); the rest then fail.
        self._handoff_deadline = time.monotonic() + min(_HANDOFF_SECONDS, self.settings.shutdown_grace_seconds)
        log.info("shutting down: refusing new jobs; %d queued job(s) wait up to %.0f s to be placed elsewhere",
                 self.table.depth, self._handoff_deadline - time.monotonic())
        self.state.model_state = ModelState.STOPPING
        self.table.stop_accepting()
        return time.monotonic() + self.settings.shutdown_grace_seconds

    def _shutdown_finished(self, grace_deadline: float) -> bool:
        if self.table.depth and time.monotonic() >= self._handoff_deadline:
            for job in self.table.fail_queued(errors.shutting_down("the model server shut down before the job ran")):
                self._publish(job.id)
        running = self.table.running
        if running is None:
            return self.table.depth == 0
        if time.monotonic() >= grace_deadline and not running.cancel_requested:
            log.info("job %s still running after the grace period: cancelling it", running.id)
            self.table.cancel(running.id, reason=errors.shutting_down("the model server shut down while the job ran"))
        return False

    def _close(self) -> None:
        self.worker.stopping.set()
        self.decoder.stop()
        for identity, ref in list(self.decoder.waiting):  # never left without an answer
            self._send(identity, ref, Rejected(error=errors.shutting_down()))
        # Let the worker finish its bookkeeping for the last job (it is idle or just cancelled);
        # a worker still loading the model cannot be interrupted, so do not wait for long.
        self.worker.join(timeout=5 if self.state.pipeline is not None else 0.1)
        for job_id in list(self._watchers):
            self._publish(job_id)
        if self.webhooks is not None:
            self.webhooks.stop()  # what is due now goes out; the rest waits on disk for the next start
        self.router.close(linger=1000)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._events.close(linger=0)
        self._decoded.close(linger=0)
        if self._owns_ctx and not self.worker.is_alive():
            self.ctx.term()  # left to the garbage collector, term() could block some other thread
        log.info("model server stopped")

    # --- requests ----------------------------------------------------------------------

    def _send(self, identity: bytes, ref: int, body, blobs=()) -> None:
        self.router.send_multipart([identity, *codec.encode(body, ref, blobs)], copy=False)

    def _handle(self, frames) -> None:
        identity, payload = bytes(frames[0]), [f.buffer for f in frames[1:]]
        try:
            envelope, _ = codec.decode(payload)
        except ProtocolError as exc:
            log.warning("refused a malformed message: %s", exc)
            self._send(identity, exc.ref, Rejected(error=errors.undecodable(exc, codec.PROTOCOL_ID.decode())))
            return
        body, ref = envelope.body, envelope.ref
        try:
            handler = self._handlers.get(type(body))
            if handler is None:
                raise errors.not_a_request(type(body).__name__)
            job_id = getattr(body, "job_id", None)
            if job_id is not None and not JOB_ID.match(job_id) and not (job_id == "" and isinstance(body, Submit)):
                raise errors.not_found(job_id)  # ids name files on disk: one not of ours is unknown, whatever it holds
            handler(self, identity, ref, body)
        except Rejection as exc:
            self._send(identity, ref, Rejected(error=exc.error))
        except Exception:  # a bug in one request must not take the IO loop down
            log.exception("error handling %s", type(body).__name__)
            self._send(identity, ref, Rejected(error=errors.handling_failed(type(body).__name__)))

    def _on_ping(self, identity, ref, msg: Ping) -> None:
        self._send(identity, ref, self.pong())

    def pong(self) -> Pong:
        pipeline, running = self.state.pipeline, self.table.running
        storage = self.table.records.health
        return Pong(
            # The default model's name (a hub id, or a folder's or file's name): never a server's path.
            model=self.worker.models.catalog.default.name, model_state=self.state.model_state,
            optimizations=pipeline.optimizations() if pipeline else {},
            queue_depth=self.table.depth, queue_capacity=self.settings.queue_size,
            running_job=running.id if running else None, rss_bytes=memory.rss_bytes(),
            peak_rss_bytes=memory.peak_rss_bytes(), load_seconds=self.state.load_seconds,
            available_bytes=memory.available_bytes(),
            stats=dict(self.table.stats, storage_errors=storage.errors if storage else 0,
                       webhooks_pending=self.table.webhooks.pending() if self.table.webhooks else 0),
            uptime_seconds=round(time.monotonic() - self._started, 1), error=self.state.error,
            schedulers=pipeline.schedulers() if pipeline else [], pid=os.getpid(),
            unavailable_presets=pipeline.unavailable_presets() if pipeline else {}, load=self.state.progress.status(),
            server_id=self.table.server_id, max_queued_per_client=self.settings.max_queued_per_client,
            loaded_model=getattr(self.worker.models.loaded, "name", ""),
            default_model=self.worker.models.catalog.default.name,
            storage=storage.status() if storage else None, speeds=self.worker.speeds.entries(),
            host=self.worker.speeds.host, memory_budget=self.worker.budget.status())

    def _on_submit(self, identity, ref, msg: Submit) -> None:
        try:
            admission.check(msg, self.state, self.settings)
            admission.check_disk(self.table.records.health)
            if not msg.job_id:  # a job placed again keeps the deadline it was accepted with
                models = self.worker.models
                deadlines.check(msg.params, self.table, self.worker.speeds, msg.params.model or
                                models.catalog.default.name, models.unavailable_presets())
            predicted = self.worker.budget.check(msg.params, admission.source_pixels(msg))
            memory_view = predicted and JobMemory(predicted_peak_bytes=predicted.peak_bytes, basis=predicted.basis)
            if has_uploads(msg.params):  # bounds first, so a flood of uploads is refused before any is decoded
                self.table.reserve(msg.client_id)
                self.decoder.put(Pending(identity, ref, msg, memory=memory_view))
                return
            job = self.table.submit(msg.params, msg.client_id, msg.request_id, job_id=msg.job_id, memory=memory_view)
        except Rejection:
            self.table.stats["jobs_rejected"] += 1
            raise
        self._accepted(identity, ref, job)

    def _queue_decoded(self, pending: Pending) -> None:
        msg, rejection = pending.msg, pending.rejection
        if rejection is not None:
            self.table.release(msg.client_id)
        else:
            try:
                job = self.table.submit(msg.params, msg.client_id, msg.request_id, *pending.images, reserved=True,
                                        job_id=msg.job_id, memory=pending.memory)
            except Rejection as exc:  # shutting down since the place was reserved
                rejection = exc
            else:
                self._accepted(pending.identity, pending.ref, job)
                return
        self.table.stats["jobs_rejected"] += 1
        self._send(pending.identity, pending.ref, Rejected(error=rejection.error))

    def _accepted(self, identity, ref, job: Job) -> None:
        with job_context(job.id, job.request_id):
            log.info("queued at position %d for client %s", self.table.depth, job.client_id or "-")
        self._send(identity, ref, Accepted(job=self.table.view(job)))

    def _on_get_job(self, identity, ref, msg: GetJob) -> None:
        self._send(identity, ref, JobInfo(job=self.table.view(self.table.get(msg.job_id, msg.client_id))))

    def _on_watch(self, identity, ref, msg: Watch) -> None:
        job = self.table.get(msg.job_id, msg.client_id)
        self._watchers.setdefault(job.id, set()).add((identity, ref))
        self._publish(job.id)

    def _on_fetch(self, identity, ref, msg: FetchResult) -> None:
        info, data = self.table.result(msg.job_id, msg.index, msg.client_id)
        self._send(identity, ref, Result(job_id=msg.job_id, image=info), [data])

    def _on_preview(self, identity, ref, msg: FetchPreview) -> None:
        step, data = self.table.preview(msg.job_id, msg.client_id)
        job = self.table.get(msg.job_id, msg.client_id)
        info = ImageInfo(index=job.image_index, seed=job.params.seed + job.image_index, media_type="image/jpeg",
                         width=job.params.width // 8, height=job.params.height // 8, size_bytes=len(data))
        self._send(identity, ref, Result(job_id=msg.job_id, image=info), [data])

    def _on_cancel(self, identity, ref, msg: Cancel) -> None:
        job = self.table.cancel(msg.job_id, msg.mode, msg.client_id)
        with job_context(job.id, job.request_id):
            log.info("%s requested (state %s)", msg.mode.value, job.state.value)
        self._send(identity, ref, JobInfo(job=self.table.view(job)))
        self._publish(job.id)

    def _on_delete(self, identity, ref, msg: Delete) -> None:
        job = self.table.delete(msg.job_id, msg.client_id)
        with job_context(job.id, job.request_id):
            log.info("deleted at its owner's request")
        self._send(identity, ref, JobInfo(job=self.table.view(job)))

    def _on_release(self, identity, ref, msg: Release) -> None:
        job = self.table.give_back(msg.job_id, msg.client_id)
        with job_context(job.id, job.request_id):
            log.info("given back to be placed on another server (this one is stopping)")
        self._send(identity, ref, JobInfo(job=self.table.view(job)))
        self._publish(job.id)  # its watchers here hear "not found" and look for it elsewhere

    def _on_list_models(self, identity, ref, msg: ListModels) -> None:
        # The catalog is known before the model loads, so a page can offer the models at once.
        self._send(identity, ref, self.worker.models.listing())

    def _on_list(self, identity, ref, msg: ListJobs) -> None:
        jobs = (self.table.labelled(msg.task, msg.client_id) if msg.task
                else self.table.finished(msg.client_id, msg.finished) if msg.finished
                else self.table.unfinished(msg.client_id))
        self._send(identity, ref, JobList(jobs=[self.table.view(j) for j in jobs],
                                          owners=[j.client_id for j in jobs] if not msg.client_id else []))

    _handlers = {Ping: _on_ping, Submit: _on_submit, GetJob: _on_get_job, Watch: _on_watch,
                 FetchResult: _on_fetch, Cancel: _on_cancel, FetchPreview: _on_preview, Delete: _on_delete,
                 ListJobs: _on_list, Release: _on_release, ListModels: _on_list_models}

    # --- events ------------------------------------------------------------------------

    def _publish(self, job_id: str) -> None:
        """Send a job's current view to its watchers; a terminal view ends the watch."""
        watchers = self._watchers.get(job_id)
        if not watchers:
            return
        try:
            job: Job = self.table.get(job_id)
        except Rejection as exc:
            for identity, ref in self._watchers.pop(job_id):
                self._send(identity, ref, Rejected(error=exc.error))
            return
        view = self.table.view(job)
        message_type = _TERMINAL.get(view.state, Progress)
        if view.state.terminal:
            del self._watchers[job_id]
        for identity, ref in watchers:
            self._send(identity, ref, message_type(job=view))

    def _heartbeat(self) -> None:
        # Watchers hear from us at least every heartbeat, even during a long VAE decode, so a
        # silent gateway deadline means a dead model server, not a slow step; so do senders whose
        # uploads wait to be decoded.
        for job_id in list(self._watchers):
            self._publish(job_id)
        for identity, ref in list(self.decoder.waiting):
            self._send(identity, ref, Working())
        self.table.evict_expired()
        for job in self.table.fail_overdue(errors.deadline_passed):
            self._publish(job.id)
        self._end_awaiting()

    def _end_awaiting(self) -> None:
        """Jobs that wait for their gateway to send their uploads again get AWAIT_UPLOADS_SECONDS from
        the model being ready (gateways place them once it is), then end lost."""
        if not self._awaiting or self.state.model_state is not ModelState.READY:
            return
        self._ready_at = self._ready_at or time.monotonic()
        if time.monotonic() - self._ready_at < AWAIT_UPLOADS_SECONDS:
            return
        self._awaiting = False
        for job in self.table.fail_awaiting(errors.model_server_lost()):
            log.info("job %s: no gateway sent its images again; ended lost", job.id)
            self._publish(job.id)
