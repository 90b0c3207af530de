"""The job table: every job's state, the bounded FIFO queue, progress, results and expiry.

Shared by the IO thread (which answers requests) and the worker thread (which runs jobs); one
lock guards it all, held briefly and never across disk work. Jobs move
queued -> running -> succeeded | failed | cancelled (``_finish`` is the only way out of
running). A job belongs to the client that submitted it: asked for by anyone else, it is "not
found", as an unknown id is. Finished jobs are kept for a TTL (then deleted, on disk too) and in
memory within a byte budget; an expired id is remembered for a while so it answers "expired".
Beside it: ``job`` (one job), ``eta`` (time estimates), ``records`` (the outputs folder).

Over 250 lines on purpose: every transition of a job happens under this one lock, so they stay in
one class; what needs no lock (estimates, disk, admission) has moved out.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
import uuid

import msgspec

from model_server import errors
from model_server.errors import Rejection
from model_server.jobs.eta import StepClock
from model_server.jobs.job import Job
from model_server.jobs.outputs import OutputStore
from model_server.jobs.records import Records
from protocol.messages import (ErrorInfo, GenerationParams, ImageInfo, JobMemory, JobState, JobView, ModelSwitch,
                               ProgressInfo, StopMode, has_uploads, lost_before_start)

_TOMBSTONES = 10_000
_SWEEP_SECONDS = 60.0


class JobTable:
    """Every job the server knows, the queue, and the running job (see the module)."""

    def __init__(self, capacity: int, ttl_seconds: float, budget_bytes: int, clock=time.monotonic,
                 per_client: int = 0, store: OutputStore | None = None, server_id: str = "",
                 min_free_disk_bytes: int = 0):
        self.capacity = capacity
        # Begins every job id made here, so a gateway in front of many servers knows where a job lives.
        self.server_id = server_id or secrets.token_hex(4)
        self.per_client = per_client  # queued jobs one client may have; 0 = no cap
        self.ttl_seconds = ttl_seconds
        self.budget_bytes = budget_bytes
        self.records = Records(store, min_free_disk_bytes)
        self.eta = StepClock()
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._running: Job | None = None
        # Queue places held for submissions whose uploads are being decoded (client -> count).
        self._reserved: collections.Counter[str] = collections.Counter()
        self._expired: collections.OrderedDict[str, str] = collections.OrderedDict()  # id -> owner
        self._doomed: list[str] = []  # expired under the lock, to delete from disk after it
        self._accepting = True
        self._next_sweep = clock()
        self.webhooks = None  # the Outbox (model_server.webhooks) owed each ended job's webhook, when they are on
        # Monotonic counters for /metrics (reset when the model server restarts).
        self.stats = {"jobs_succeeded": 0, "jobs_failed": 0, "jobs_cancelled": 0, "jobs_rejected": 0,
                      "generation_seconds": 0.0, "steps": 0, "step_seconds": 0.0, "images": 0,
                      "model_switches": 0, "model_switch_seconds": 0.0}

    # --- submitting and looking up ------------------------------------------------------

    def reserve(self, client_id: str = "") -> None:
        """Hold a queue place for a submission still being prepared (its uploads decoded), so
        the queue's and the client's bounds are checked before that work, not after it. Then
        ``submit(..., reserved=True)`` takes the place, or ``release`` gives it back."""
        with self._lock:
            self._check_room_locked(client_id)
            self._reserved[client_id] += 1

    def release(self, client_id: str = "") -> None:
        with self._lock:
            self._unreserve_locked(client_id)

    def submit(self, params: GenerationParams, client_id: str = "", request_id: str = "", init_image=None,
               mask=None, control_images=None, control_masks=None, reserved: bool = False, job_id: str = "",
               memory: JobMemory | None = None) -> Job:
        """Queue a job. ``job_id`` keeps the id a job had on a model server that died before running
        it (a gateway placing it again); an id this server already knows is refused."""
        if job_id and job_id.startswith(self.server_id):  # only this server makes ids with its prefix, never a peer
            if reserved:
                self.release(client_id)
            raise errors.foreign_job_id(job_id, self.server_id)
        if job_id and self._known(job_id):
            if reserved:
                self.release(client_id)
            raise errors.duplicate_job(job_id)
        if job_id:
            with self._lock:  # a lost job that never started, read back from its record: placed again here
                self._jobs.pop(job_id, None)
        with self._lock:
            if reserved:  # the bounds were checked when the place was reserved
                self._unreserve_locked(client_id)
                if not self._accepting:
                    raise Rejection(errors.shutting_down())
            else:
                self._check_room_locked(client_id)
            job = Job(id=job_id or self.server_id + uuid.uuid4().hex[8:], params=params, created_at=time.time(),
                      client_id=client_id, request_id=request_id, init_image=init_image, mask=mask,
                      control_images=control_images or [], control_masks=control_masks or [], memory=memory)
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._work.notify()
        self._record("accepted", job)
        return job

    def requeue(self, records) -> list[Job]:
        """At start, before the worker runs anything: the jobs a crash left queued (never started),
        under their ids, whatever the bounds (they were accepted once). Text-to-image ones are queued
        again in their order; the others wait for their gateway to place them again with their
        uploads (``fail_awaiting`` ends those it never does)."""
        jobs = []
        with self._lock:
            for r in records:
                job = Job(id=r.job_id, params=r.params, created_at=r.created_at, client_id=r.client_id,
                          request_id=r.request_id, awaiting_uploads=has_uploads(r.params))
                self._jobs[job.id] = job
                if not job.awaiting_uploads:
                    self._queue.append(job.id)
                jobs.append(job)
            self._work.notify()
        return jobs

    def fail_awaiting(self, error: ErrorInfo) -> list[Job]:
        """End the jobs still waiting for their uploads (no gateway sent them): lost, retryable."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.awaiting_uploads and not job.state.terminal]
        for job in jobs:
            self._finish(job, JobState.FAILED, error=error)
        return jobs

    def _known(self, job_id: str) -> bool:
        """Whether ``job_id`` is taken here: a job of this server's, unless it was lost at a restart
        before it ever started (its record says so), which its gateway may place again, here too."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job_id in self._expired or (job is not None and not job.awaiting_uploads
                                           and not lost_before_start(job)):
                return True
        if job is not None:
            return False
        record = self.records.load(job_id, self._clock())
        return record is not None and not lost_before_start(record)

    def _check_room_locked(self, client_id: str) -> None:
        if not self._accepting:
            raise Rejection(errors.shutting_down())
        if len(self._queue) + self._reserved.total() >= self.capacity:
            raise errors.queue_full(self.capacity, self.eta.until_a_slot_frees(self._running))
        mine = sum(1 for job_id in self._queue if self._jobs[job_id].client_id == client_id)
        mine += self._reserved[client_id]
        if self.per_client and client_id and mine >= self.per_client:
            raise errors.client_queue_full(mine, self.per_client, self.eta.until_a_slot_frees(self._running))

    def _unreserve_locked(self, client_id: str) -> None:
        self._reserved[client_id] -= 1
        if self._reserved[client_id] <= 0:
            del self._reserved[client_id]

    def _record(self, event: str, job: Job) -> None:
        def snapshot():
            with self._lock:  # the final record is written (or being written) by _finish
                return None if job.state.terminal or job.finishing else job.record()

        self.records.write(event, snapshot)

    def get(self, job_id: str, owner: str = "") -> Job:
        """The job, if ``owner`` may see it ("" sees every job); others get "not found"."""
        with self._lock:
            job = self._jobs.get(job_id)
            unknown = job is None and job_id not in self._expired
        if unknown:  # evicted, or from before a restart: back from its record, read outside the lock
            loaded = self.records.load(job_id, self._clock())
            if loaded is not None:
                with self._lock:
                    job = self._jobs.setdefault(job_id, loaded)
        try:
            with self._lock:
                return self._visible_locked(job_id, job, owner)
        finally:
            self._delete_doomed()

    def _visible_locked(self, job_id: str, job: Job | None, owner: str) -> Job:
        if job is not None:
            if not job.visible_to(owner):
                raise errors.not_found(job_id)  # someone else's job: exactly as if it did not exist
            if not (job.state.terminal and self._too_old(job)):
                return job
            self._expire_locked(job)
        if job_id in self._expired and (not owner or self._expired[job_id] == owner):
            raise errors.expired(job_id, self.ttl_seconds)
        raise errors.not_found(job_id)

    def unfinished(self, owner: str = "") -> list[Job]:
        """The running job, then the queued ones in order, of ``owner`` ("" = everyone's)."""
        with self._lock:
            jobs = ([self._running] if self._running else []) + [self._jobs[i] for i in self._queue]
            return [job for job in jobs if job.visible_to(owner)]

    def labelled(self, task: str, owner: str) -> list[Job]:
        """``owner``'s jobs labelled ``task``, unfinished or still kept ("" owner: everyone's), oldest first."""
        with self._lock:
            found = [job for job in self._jobs.values() if job.params.task == task and job.visible_to(owner)]
        return sorted(found, key=lambda job: job.created_at)

    def finished(self, owner: str, limit: int) -> list[Job]:
        """``owner``'s ``limit`` most recently finished jobs still kept ("" owner: everyone's), newest first: those in
        memory and those only on disk (evicted, or from before a restart), read outside the lock."""
        with self._lock:
            held = {job.id: job for job in self._jobs.values() if job.state.terminal and job.visible_to(owner)
                    and not self._too_old(job)}
            gone = set(self._jobs) | set(self._expired)
        on_disk = {}
        store = self.records.store
        if store is not None:
            for record in store.ended_since(time.time() - self.ttl_seconds):
                if record.job_id not in gone and (not owner or record.client_id == owner):
                    on_disk[record.job_id] = record
        when = {**{i: r.finished_at or 0.0 for i, r in on_disk.items()},
                **{i: job.finished_at or 0.0 for i, job in held.items()}}
        newest = sorted(when, key=when.get, reverse=True)[:limit]
        return [held[i] if i in held else self.records.job_of(on_disk[i], self._clock()) for i in newest]

    def delete(self, job_id: str, owner: str = "") -> Job:
        """Forget a finished job: its images and record leave the disk; its id answers "not found"."""
        job = self.get(job_id, owner)
        with self._lock:
            if not job.state.terminal:
                raise errors.not_finished(job_id)
            self._jobs.pop(job.id, None)
        self.records.delete(job.id)
        return job

    def view(self, job: Job) -> JobView:
        """A consistent snapshot of one job for the wire."""
        webhook = self.webhooks.status(job.id) if self.webhooks is not None else None
        with self._lock:
            return JobView(
                job_id=job.id, state=job.state, created_at=job.created_at, params=job.params,
                queue_position=self._queue.index(job.id) + 1 if job.id in self._queue else None,
                started_at=job.started_at, finished_at=job.finished_at, progress=self._progress_locked(job),
                error=job.error, images=[info for info, _ in job.images], cancel_requested=job.cancel_requested,
                interrupted=job.interrupted, engine=job.engine, model=job.model, model_switch=job.model_switch,
                lora_hashes=dict(job.lora_hashes), not_stored=job.not_stored,
                awaiting_uploads=job.awaiting_uploads and not job.state.terminal, webhook=webhook, memory=job.memory)

    def _progress_locked(self, job: Job) -> ProgressInfo:
        elapsed = round((job.finished_at or time.time()) - job.started_at, 3) if job.started_at else 0.0
        if job.state is JobState.QUEUED:
            ahead = list(self._queue)[:self._queue.index(job.id)] if job.id in self._queue else []
            return ProgressInfo(total_steps=job.total_steps, eta_seconds=self.eta.until_done(
                self._running, [self._jobs[i] for i in ahead], job))
        if job.state is JobState.RUNNING:
            return ProgressInfo(step=job.step, total_steps=job.total_steps, image_index=job.image_index,
                                seconds_per_step=job.seconds_per_step, eta_seconds=self.eta.remaining(job),
                                elapsed_seconds=elapsed, preview_step=job.preview[0] if job.preview else None,
                                detail=job.detail)
        if job.state is JobState.SUCCEEDED:
            return ProgressInfo(step=job.total_steps, total_steps=job.total_steps, image_index=job.params.n - 1,
                                seconds_per_step=job.seconds_per_step, eta_seconds=0.0, elapsed_seconds=elapsed)
        # failed or cancelled: how far it got
        return ProgressInfo(step=job.step, total_steps=job.total_steps, image_index=job.image_index,
                            seconds_per_step=job.seconds_per_step, eta_seconds=0.0, elapsed_seconds=elapsed)

    def result(self, job_id: str, index: int, owner: str = "") -> tuple[ImageInfo, bytes]:
        job = self.get(job_id, owner)
        with self._lock:
            if job.state is not JobState.SUCCEEDED and not job.images:
                raise errors.no_image(job_id, job.state.value, job.state.terminal)
            if not 0 <= index < len(job.images):
                raise errors.no_such_image(job_id, index, len(job.images))
            info, data = job.images[index]
        data = data if data is not None else self.records.image(job, index)  # from disk, outside the lock
        if data is None:
            raise errors.image_gone(job_id, index)
        return info, data

    def preview(self, job_id: str, owner: str = "") -> tuple[int, bytes]:
        job = self.get(job_id, owner)
        with self._lock:
            if job.preview is None or job.state.terminal:
                raise errors.no_preview(job_id)
            return job.preview

    # --- the worker's side -------------------------------------------------------------

    def next_job(self, timeout: float | None = None) -> Job | None:
        """Block until a job is queued, then mark it running and return it."""
        with self._work:
            if not self._queue or not self._accepting:  # stopping: queued jobs wait to be handed off
                self._work.wait(timeout)
            if not self._queue or not self._accepting:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state = JobState.RUNNING
            job.started_at = time.time()
            self._running = job
        self._record("started", job)
        return job

    def record_engine(self, job: Job, engine: str) -> None:
        with self._lock:
            job.engine = engine[:300]

    def record_model(self, job: Job, model: str, switch: ModelSwitch | None, lora_hashes: dict[str, str]) -> None:
        with self._lock:
            job.model, job.model_switch, job.lora_hashes, job.detail = model, switch, dict(lora_hashes), ""
            if switch is not None:
                self.stats["model_switches"] += 1
                self.stats["model_switch_seconds"] += switch.seconds

    def record_peak(self, job: Job, peak_bytes: int) -> None:
        with self._lock:
            job.memory = msgspec.structs.replace(job.memory or JobMemory(), peak_rss_bytes=peak_bytes)

    def record_tiles(self, job: Job, tiles: int) -> None:
        with self._lock:
            job.tiles = tiles

    def record_detail(self, job: Job, detail: str) -> None:
        with self._lock:
            job.detail = detail[:300]

    def record_step(self, job: Job, image_index: int, step: int, seconds: float | None) -> None:
        with self._lock:
            job.image_index, job.step = image_index, step
            if seconds is not None and seconds > 0:
                self.stats["steps"] += 1
                self.stats["step_seconds"] += seconds
                job.step_seconds += seconds
                job.timed_steps += 1
                self.eta.record(job, seconds)

    def record_preview(self, job: Job, step: int, data: bytes) -> None:
        with self._lock:
            job.preview = (step, data)

    def succeed(self, job: Job, images: list[tuple[ImageInfo, bytes]]) -> None:
        # An interrupt keeps what was made; the job succeeds (AUTOMATIC1111 semantics).
        self._finish(job, JobState.SUCCEEDED, images=images)

    def fail(self, job: Job, error: ErrorInfo) -> None:
        self._finish(job, JobState.FAILED, error=error)

    def mark_cancelled(self, job: Job, images: list[tuple[ImageInfo, bytes]] = ()) -> None:
        """End a stopped job: ``cancelled`` when its client asked; ``failed`` with the stop's own
        retryable error when the server stopped it (a shutdown), so no client takes that for a
        user's cancel."""
        if job.stop_error is not None:
            self._finish(job, JobState.FAILED, images=list(images), error=job.stop_error)
        else:
            self._finish(job, JobState.CANCELLED, images=list(images), error=errors.cancelled())

    def _finish(self, job: Job, state: JobState, images=(), error: ErrorInfo | None = None) -> None:
        """End a job. Its images and record reach the disk *before* it turns terminal, so anyone
        told "completed" can fetch the result, and nothing is held twice in memory."""
        images = list(images)
        with self._lock:
            if job.state.terminal or job.finishing:
                return
            job.finishing = True
            if job.id in self._queue:
                self._queue.remove(job.id)  # no worker may start it while it is being finished
            finished_at = time.time()
            record = msgspec.structs.replace(job.record(), state=state, error=error, finished_at=finished_at,
                                             images=[info for info, _ in images])
        files, not_stored = self.records.finished(record, [data for _, data in images])
        if self.webhooks is not None:  # owed before anyone can see the job ended
            self.webhooks.job_ended(record)
        with self._lock:
            # On disk: served from there (the page cache keeps recent ones hot), so the model
            # server's own memory stays flat however many results are kept.
            on_disk = bool(images) and len(files) == len(images)
            job.state, job.error, job.files, job.not_stored = state, error, files, not_stored
            job.images = [(info, None if on_disk else data) for info, data in images]
            job.finished_at, job.finished_mono = finished_at, self._clock()
            job.preview = None
            self.stats[f"jobs_{state.value}"] += 1
            self.stats["images"] += len(images)
            if job.started_at is not None:
                self.stats["generation_seconds"] += finished_at - job.started_at
            if self._running is job:
                self._running = None
            self._evict_locked()
        self._delete_doomed()

    # --- cancelling and shutting down --------------------------------------------------

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, owner: str = "",
               reason: ErrorInfo | None = None) -> Job:
        """Cancel a queued job at once; ask a running one to stop at its next step.

        ``interrupt`` and ``skip`` only concern a running job (as in AUTOMATIC1111) and keep
        what it made; a later ``cancel`` still wins over them. ``reason`` is the error the job
        ends with when not the client's own cancel (a shutdown: retryable).
        """
        job = self.get(job_id, owner)
        with self._lock:
            if job.state.terminal or (mode is not StopMode.CANCEL and job.state is JobState.QUEUED):
                return job
            if job.stop_mode is not StopMode.CANCEL:
                job.stop_mode, job.stop_error = mode, reason
            queued = job.state is JobState.QUEUED
        if queued:
            self.mark_cancelled(job)
        return job

    def stopped_early(self, job: Job) -> StopMode | None:
        """Called by the worker after each image: consume a skip, report an interrupt."""
        with self._lock:
            mode = job.stop_mode
            if mode in (StopMode.SKIP, StopMode.INTERRUPT):
                job.interrupted = True
            if mode is StopMode.SKIP:
                job.stop_mode = None
            return mode

    def give_back(self, job_id: str, owner: str = "") -> Job:
        """Take a queued job out of this table for good (handed to another server while this one
        stops); its record and marker leave the disk, so a restart does not report it lost."""
        job = self.get(job_id, owner)
        with self._lock:
            if job.state is not JobState.QUEUED or job_id not in self._queue:
                raise errors.not_releasable(job_id, job.state.value)
            self._queue.remove(job_id)
            del self._jobs[job_id]
        self.records.delete(job_id)
        return job

    def seconds_ahead(self, predict) -> float:
        """Seconds until the running and queued jobs are done, each by ``predict(job)`` (its whole run, None when
        unknown: the smoothed s/step then, or nothing), the running one less what it has run."""
        with self._lock:
            total = 0.0
            running = self._running
            if running is not None:
                whole = predict(running)
                elapsed = time.time() - (running.started_at or time.time())
                total += max(0.0, whole - elapsed) if whole is not None else (self.eta.remaining(running) or 0.0)
            for job_id in self._queue:
                job = self._jobs[job_id]
                whole = predict(job)
                if whole is None and self.eta.seconds_per_step is not None:
                    whole = job.total_steps * job.params.n * self.eta.seconds_per_step
                total += whole or 0.0
            return total

    def fail_overdue(self, error_for) -> list[Job]:
        """End the queued jobs whose deadline has passed, each with ``error_for(deadline)``."""
        now = time.time()
        with self._lock:
            overdue = [self._jobs[i] for i in self._queue if self._jobs[i].params.deadline_seconds
                       and now > self._jobs[i].created_at + self._jobs[i].params.deadline_seconds]
            for job in overdue:  # out of the queue under the lock the worker takes jobs under: none starts now
                self._queue.remove(job.id)
        for job in overdue:
            self._finish(job, JobState.FAILED, error=error_for(job.params.deadline_seconds))
        return overdue

    def stop_accepting(self) -> None:
        with self._lock:
            self._accepting = False

    def fail_queued(self, error: ErrorInfo) -> list[Job]:
        """Fail every queued job (shutdown); returns them so watchers can be told."""
        with self._lock:
            jobs = [self._jobs[job_id] for job_id in self._queue]
        for job in jobs:
            self.fail(job, error)
        return jobs

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def depth(self) -> int:
        return len(self._queue)

    # --- expiry --------------------------------------------------------------------------

    def evict_expired(self) -> None:
        with self._lock:
            self._evict_locked()
            sweep = self._clock() >= self._next_sweep
            if sweep:
                self._next_sweep = self._clock() + _SWEEP_SECONDS
                held = set(self._jobs)
        self._delete_doomed()
        if sweep:
            self.records.sweep(self.ttl_seconds, keep=held)

    def _too_old(self, job: Job) -> bool:
        return job.finished_mono is not None and self._clock() - job.finished_mono > self.ttl_seconds

    def _expire_locked(self, job: Job) -> None:
        """Past its TTL: gone from memory, soon from disk; its id answers "expired" (to its owner)."""
        self._jobs.pop(job.id, None)
        self._doomed.append(job.id)
        self._tombstone_locked(job)

    def _tombstone_locked(self, job: Job) -> None:
        self._expired[job.id] = job.client_id
        if len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

    def _delete_doomed(self) -> None:
        with self._lock:
            doomed, self._doomed = self._doomed, []
        for job_id in doomed:
            self.records.delete(job_id)

    def _evict_locked(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.state.terminal),
                          key=lambda j: j.finished_mono or 0.0)
        total = sum(j.result_bytes for j in finished)
        for job in finished:
            if self._too_old(job):
                total -= job.result_bytes
                self._expire_locked(job)
            elif total > self.budget_bytes:
                total -= job.result_bytes
                del self._jobs[job.id]
                if not job.files:  # held only in memory: gone for good
                    self._tombstone_locked(job)
                # else still on disk: get() brings it back on demand
