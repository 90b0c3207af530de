"""The job table: every job's state, the bounded FIFO queue, progress, results and expiry.

Shared by the IO thread (which answers requests) and the worker thread (which runs jobs); one
lock guards it all, and every method holds it only briefly. Jobs move
queued -> running -> succeeded | failed | cancelled (``_finish`` is the only way out of
running). Finished jobs keep their images for a TTL and within a byte budget, oldest evicted
first; an evicted id is remembered for a while so it answers "expired" rather than "not found".
With an OutputStore, every state change is also recorded on disk (outside the lock), and a job
the table no longer holds is read back from its record, so its images outlive eviction and
restarts.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid

import msgspec

from model_server.jobs.outputs import JobRecord, OutputStore
from protocol.errors import ErrorCode
from protocol.messages import ErrorInfo, GenerationParams, ImageInfo, JobState, JobView, ProgressInfo, StopMode

_TOMBSTONES = 10_000
log = logging.getLogger(__name__)


class Rejection(Exception):
    """A request that cannot be carried out; carries the ErrorInfo to send back."""

    def __init__(self, error: ErrorInfo):
        super().__init__(error.message)
        self.error = error


def not_found(job_id: str) -> Rejection:
    return Rejection(ErrorInfo(
        code=ErrorCode.NOT_FOUND, message=f"no job with id {job_id[:64]!r}",
        hint="Check the id: it is the one POST /v1/jobs returned to you. Finished jobs are kept for "
             "RESULT_TTL_SECONDS, across restarts, unless deleted."))


@dataclasses.dataclass
class Job:
    id: str
    params: GenerationParams
    created_at: float
    client_id: str = ""
    request_id: str = ""
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    finished_mono: float | None = None
    image_index: int = 0
    step: int = 0
    seconds_per_step: float | None = None
    error: ErrorInfo | None = None
    images: list[tuple[ImageInfo, bytes | None]] = dataclasses.field(default_factory=list)  # None: on disk
    files: list[str] = dataclasses.field(default_factory=list)  # the images in the OutputStore
    stop_mode: StopMode | None = None
    stop_error: ErrorInfo | None = None  # why it was cancelled, when not at a client's request
    interrupted: bool = False
    preview: tuple[int, bytes] | None = None  # (step, JPEG) of the latest preview
    finishing: bool = False  # _finish is writing its result; it turns terminal right after

    @property
    def cancel_requested(self) -> bool:
        return self.stop_mode is StopMode.CANCEL

    @property
    def total_steps(self) -> int:
        return self.params.steps

    @property
    def result_bytes(self) -> int:
        return sum(len(data) for _, data in self.images if data is not None)

    def record(self) -> JobRecord:
        return JobRecord(job_id=self.id, state=self.state, params=self.params, created_at=self.created_at,
                         client_id=self.client_id, request_id=self.request_id, started_at=self.started_at,
                         finished_at=self.finished_at, error=self.error, images=[i for i, _ in self.images],
                         files=list(self.files), interrupted=self.interrupted)

    @classmethod
    def from_record(cls, r: JobRecord) -> "Job":
        return cls(id=r.job_id, params=r.params, created_at=r.created_at, client_id=r.client_id,
                   request_id=r.request_id, state=r.state, started_at=r.started_at, finished_at=r.finished_at,
                   error=r.error, images=[(info, None) for info in r.images], files=list(r.files),
                   interrupted=r.interrupted)


class JobTable:
    def __init__(self, capacity: int, ttl_seconds: float, budget_bytes: int, clock=time.monotonic,
                 per_client: int = 0, store: OutputStore | None = None):
        self.store = store
        self._persist_lock = threading.Lock()
        self.capacity = capacity
        self.per_client = per_client  # queued jobs one client may have; 0 = no cap
        self.ttl_seconds = ttl_seconds
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._jobs: dict[str, Job] = {}
        self._queue: collections.deque[str] = collections.deque()
        self._running: Job | None = None
        self._expired: collections.OrderedDict[str, str] = collections.OrderedDict()  # id -> owner
        self._accepting = True
        self._sps_estimate: float | None = None  # seconds per step, smoothed across jobs
        self._next_sweep = clock()
        # Monotonic counters for /metrics (reset when the model server restarts).
        self.stats = {"jobs_succeeded": 0, "jobs_failed": 0, "jobs_cancelled": 0, "jobs_rejected": 0,
                      "generation_seconds": 0.0, "steps": 0, "step_seconds": 0.0, "images": 0}

    # --- submitting and looking up ------------------------------------------------------

    def submit(self, params: GenerationParams, client_id: str = "", request_id: str = "") -> Job:
        with self._lock:
            if not self._accepting:
                raise Rejection(ErrorInfo(
                    code=ErrorCode.SHUTTING_DOWN, message="the model server is shutting down",
                    hint="Retry in a few seconds; it restarts on its own.", retryable=True,
                    retry_after=5.0))
            if len(self._queue) >= self.capacity:
                # A slot frees when the running job ends.
                wait = self._remaining_locked(self._running) if self._running else None
                raise Rejection(ErrorInfo(
                    code=ErrorCode.QUEUE_FULL,
                    message=f"the queue is full ({self.capacity} jobs waiting)",
                    hint="Retry later, or lower steps/size so jobs finish sooner.",
                    retryable=True, retry_after=round(max(wait or 10.0, 1.0), 1)))
            if self.per_client and client_id:
                mine = sum(1 for job_id in self._queue if self._jobs[job_id].client_id == client_id)
                if mine >= self.per_client:
                    raise Rejection(ErrorInfo(
                        code=ErrorCode.QUEUE_FULL,
                        message=f"you already have {mine} jobs waiting (the limit per client is {self.per_client})",
                        hint="Wait for one of your jobs to start, or cancel one, then submit again.",
                        retryable=True, retry_after=round(max(self._remaining_locked(self._running) or 10.0, 1.0)
                                                          if self._running else 10.0, 1)))
            job = Job(id=uuid.uuid4().hex, params=params, created_at=time.time(),
                      client_id=client_id, request_id=request_id)
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._work.notify()
        self._persist("accepted", job)
        return job

    def _persist(self, event: str, job: Job) -> None:
        """Record "accepted" or "started" on disk; a full or broken disk costs the record, never the job.

        The IO and worker threads both record; one lock keeps their writes in order, and each
        writes the job's state as it is at that moment, so a late write never rolls it back.
        """
        if self.store is None:
            return
        with self._persist_lock:
            with self._lock:
                if job.state.terminal or job.finishing:
                    return  # the final record is written (or being written) by _finish
                record = job.record()
            try:
                getattr(self.store, event)(record)
            except OSError as exc:
                log.error("could not record job %s on disk (%s): %s", job.id, event, exc)

    def get(self, job_id: str, owner: str = "") -> Job:
        """The job, if ``owner`` may see it ("" sees every job); others get "not found"."""
        with self._lock:
            return self._get_locked(job_id, owner)

    def _get_locked(self, job_id: str, owner: str = "") -> Job:
        job = self._jobs.get(job_id)
        if job is None and job_id not in self._expired and self.store is not None:
            record = self.store.load(job_id)
            if record is not None:  # evicted or from before a restart: back from disk
                job = Job.from_record(record)
                # Its age counts from when it finished, not from when it was read back.
                job.finished_mono = self._clock() - max(0.0, time.time() - (record.finished_at or time.time()))
                self._jobs[job.id] = job
        if job is not None:
            if owner and job.client_id != owner:
                raise not_found(job_id)  # someone else's job: exactly as if it did not exist
            if job.state.terminal and self._too_old(job):
                self._expire_locked(job)
            else:
                return job
        if job_id in self._expired and (not owner or self._expired[job_id] == owner):
            raise Rejection(ErrorInfo(
                code=ErrorCode.EXPIRED, message=f"job {job_id} has expired",
                hint=f"Results are kept for {self.ttl_seconds:g} s; submit the job again."))
        raise not_found(job_id)

    def unfinished(self, owner: str = "") -> list[Job]:
        """The running job, then the queued ones in order, of ``owner`` ("" = everyone's)."""
        with self._lock:
            jobs = ([self._running] if self._running else []) + [self._jobs[i] for i in self._queue]
            return [job for job in jobs if not owner or job.client_id == owner]

    def delete(self, job_id: str, owner: str = "") -> Job:
        """Forget a finished job: its images and record leave the disk; its id answers "not found"."""
        with self._lock:
            job = self._get_locked(job_id, owner)
            if not job.state.terminal:
                raise Rejection(ErrorInfo(code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} is not finished",
                                          hint="Cancel it first; a finished job can be deleted."))
            del self._jobs[job.id]
            self._expired.pop(job.id, None)
        if self.store is not None:
            with self._persist_lock:
                self.store.delete(job.id)
        return job

    def view(self, job: Job) -> JobView:
        """A consistent snapshot of one job for the wire."""
        with self._lock:
            return self._view_locked(job)

    def _view_locked(self, job: Job) -> JobView:
        position = None
        progress = None
        if job.state is JobState.QUEUED:
            position = self._queue.index(job.id) + 1 if job.id in self._queue else None
            wait = self._eta_locked(position - 1) if position else None
            # Until it is done, like a running job's: the wait plus its own steps.
            eta = None if wait is None else round(wait + job.params.steps * job.params.n * self._sps_estimate, 1)
            progress = ProgressInfo(total_steps=job.total_steps, eta_seconds=eta)
        elif job.state is JobState.RUNNING:
            now = time.time()
            progress = ProgressInfo(
                step=job.step, total_steps=job.total_steps, image_index=job.image_index,
                seconds_per_step=job.seconds_per_step, eta_seconds=self._remaining_locked(job),
                elapsed_seconds=round(now - (job.started_at or now), 3),
                preview_step=job.preview[0] if job.preview else None)
        elif job.state is JobState.SUCCEEDED:
            progress = ProgressInfo(step=job.total_steps, total_steps=job.total_steps,
                                    image_index=job.params.n - 1, seconds_per_step=job.seconds_per_step,
                                    eta_seconds=0.0,
                                    elapsed_seconds=round((job.finished_at or 0) - (job.started_at or 0), 3))
        else:  # failed or cancelled: how far it got
            progress = ProgressInfo(step=job.step, total_steps=job.total_steps, image_index=job.image_index,
                                    seconds_per_step=job.seconds_per_step, eta_seconds=0.0,
                                    elapsed_seconds=round((job.finished_at or 0) - (job.started_at or 0), 3)
                                    if job.started_at else 0.0)
        return JobView(
            job_id=job.id, state=job.state, created_at=job.created_at, params=job.params,
            queue_position=position, started_at=job.started_at, finished_at=job.finished_at,
            progress=progress, error=job.error, images=[info for info, _ in job.images],
            cancel_requested=job.cancel_requested, interrupted=job.interrupted)

    def result(self, job_id: str, index: int, owner: str = "") -> tuple[ImageInfo, bytes]:
        with self._lock:
            job = self._get_locked(job_id, owner)
            if job.state is not JobState.SUCCEEDED and not job.images:
                raise Rejection(ErrorInfo(
                    code=ErrorCode.NOT_FOUND if job.state.terminal else ErrorCode.NOT_READY,
                    message=f"job {job_id} has no image ({job.state.value})",
                    hint="Wait for the job to succeed; watch its events or poll its status.",
                    retryable=not job.state.terminal))
            if not 0 <= index < len(job.images):
                raise Rejection(ErrorInfo(
                    code=ErrorCode.NOT_FOUND, message=f"job {job_id} has no image {index}",
                    hint=f"Image indexes run from 0 to {len(job.images) - 1}."))
            info, data = job.images[index]
            if data is None and self.store is not None:
                data = self.store.read_image(job.record(), index)
            if data is None:
                raise Rejection(ErrorInfo(code=ErrorCode.EXPIRED, message=f"image {index} of job {job_id} is gone",
                                          hint="It was deleted to keep the outputs folder within its budget."))
            return info, data

    # --- estimates ---------------------------------------------------------------------

    def _remaining_locked(self, job: Job) -> float | None:
        sps = job.seconds_per_step or self._sps_estimate
        if sps is None:
            return None
        steps_left = (job.params.n - job.image_index) * job.total_steps - job.step
        return round(max(steps_left, 0) * sps, 1)

    def _eta_locked(self, jobs_ahead: int) -> float | None:
        """Seconds until the job at queue index ``jobs_ahead`` could start."""
        if self._sps_estimate is None:
            return None
        total = (self._remaining_locked(self._running) or 0.0) if self._running else 0.0
        for job_id in list(self._queue)[:jobs_ahead]:
            p = self._jobs[job_id].params
            total += p.steps * p.n * self._sps_estimate
        return round(total, 1)


    # --- the worker's side -------------------------------------------------------------

    def next_job(self, timeout: float | None = None) -> Job | None:
        """Block until a job is queued, then mark it running and return it."""
        with self._work:
            if not self._queue:
                self._work.wait(timeout)
            if not self._queue:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state = JobState.RUNNING
            job.started_at = time.time()
            self._running = job
        self._persist("started", job)
        return job

    def record_step(self, job: Job, image_index: int, step: int, seconds: float | None) -> None:
        with self._lock:
            job.image_index, job.step = image_index, step
            if seconds is not None and seconds > 0:
                self.stats["steps"] += 1
                self.stats["step_seconds"] += seconds
                # Smooth out one-off stalls; the first step also carries warm-up work.
                prev = job.seconds_per_step
                job.seconds_per_step = seconds if prev is None else 0.7 * prev + 0.3 * seconds
                self._sps_estimate = job.seconds_per_step

    def record_preview(self, job: Job, step: int, data: bytes) -> None:
        with self._lock:
            job.preview = (step, data)

    def preview(self, job_id: str, owner: str = "") -> tuple[int, bytes]:
        with self._lock:
            job = self._get_locked(job_id, owner)
            if job.preview is None or job.state.terminal:
                raise Rejection(ErrorInfo(
                    code=ErrorCode.NOT_FOUND, message=f"job {job_id} has no preview",
                    hint="Previews exist while a job that asked for them (preview: true) is running."))
            return job.preview

    def succeed(self, job: Job, images: list[tuple[ImageInfo, bytes]]) -> None:
        # An interrupt keeps what was made; the job succeeds (AUTOMATIC1111 semantics).
        self._finish(job, JobState.SUCCEEDED, images=images)

    def fail(self, job: Job, error: ErrorInfo) -> None:
        self._finish(job, JobState.FAILED, error=error)

    def mark_cancelled(self, job: Job, images: list[tuple[ImageInfo, bytes]] = ()) -> None:
        self._finish(job, JobState.CANCELLED, images=list(images), error=job.stop_error or ErrorInfo(
            code=ErrorCode.CANCELLED, message="the job was cancelled", hint="Submit it again if needed."))

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
        files = self._store_finished(record, [data for _, data in images])
        with self._lock:
            # On disk: served from there (the page cache keeps recent ones hot), so the model
            # server's own memory stays flat however many results are kept.
            on_disk = bool(images) and len(files) == len(images)
            job.state, job.error, job.files = state, error, files
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

    def _store_finished(self, record: JobRecord, blobs: list[bytes]) -> list[str]:
        if self.store is None:
            return []
        with self._persist_lock:
            try:
                self.store.finished(record, blobs)
                return list(record.files)
            except OSError as exc:
                log.error("could not record job %s on disk (finished): %s", record.job_id, exc)
                return []

    # --- cancelling and shutting down --------------------------------------------------

    def cancel(self, job_id: str, mode: StopMode = StopMode.CANCEL, owner: str = "",
               reason: ErrorInfo | None = None) -> Job:
        """Cancel a queued job at once; ask a running one to stop at its next step.

        ``interrupt`` and ``skip`` only concern a running job (as in AUTOMATIC1111) and keep
        what it made; a later ``cancel`` still wins over them. ``reason`` is the error the job
        ends with when not the client's own cancel (a shutdown: retryable).
        """
        with self._lock:
            job = self._get_locked(job_id, owner)
            if job.state.terminal or (mode is not StopMode.CANCEL and job.state is JobState.QUEUED):
                return job
            if job.stop_mode is not StopMode.CANCEL:
                job.stop_mode = mode
                job.stop_error = reason
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
            sweep = self.store is not None and self._clock() >= self._next_sweep
            if sweep:
                self._next_sweep = self._clock() + 60.0
                held = set(self._jobs)
        if sweep:
            # Records this process never loaded (earlier runs) expire too; read outside the lock.
            with self._persist_lock:
                self.store.delete_finished_before(time.time() - self.ttl_seconds, keep=held)

    def _too_old(self, job: Job) -> bool:
        return job.finished_mono is not None and self._clock() - job.finished_mono > self.ttl_seconds

    def _expire_locked(self, job: Job) -> None:
        """Past its TTL: gone from memory and from disk; its id answers "expired" (to its owner)."""
        self._jobs.pop(job.id, None)
        if self.store is not None:
            self.store.delete(job.id)
        self._tombstone_locked(job)

    def _tombstone_locked(self, job: Job) -> None:
        self._expired[job.id] = job.client_id
        if len(self._expired) > _TOMBSTONES:
            self._expired.popitem(last=False)

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
                # else still on disk: _get_locked brings it back on demand
