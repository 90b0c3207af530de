"""The table's side of the outputs folder: each job's record written in order, read back, deleted.

Disk work happens here, outside the table's lock; one lock of its own keeps the IO and worker
threads' writes in order. A full or broken disk costs a record, never a job: the job keeps its
images in memory, its view says why they are not stored, and ``health`` turns the server's storage
status to degraded until a write succeeds again. Without an OutputStore (OUTPUTS_DIR empty) every
method does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from model_server import errors
from model_server.jobs.disk import StorageHealth
from model_server.jobs.job import Job
from model_server.jobs.outputs import JobRecord, OutputStore
from protocol.messages import JobState

log = logging.getLogger(__name__)


class Records:
    """The job table's disk work, kept out of its lock and in order."""

    def __init__(self, store: OutputStore | None, min_free_bytes: int = 0):
        self.store = store
        self.health = StorageHealth(store.folder, min_free_bytes) if store is not None else None
        self._lock = threading.Lock()
        self._started = time.time()

    def recover(self) -> list[JobRecord]:
        """At start: remove leftovers, then mark jobs a crash left running as lost; those that never
        started are returned (JobTable.requeue). A disk that fails here leaves the server starting,
        degraded, never crash-looping."""
        if self.store is None:
            return []
        again: list[JobRecord] = []
        with self._lock:
            try:
                self.store.clean_leftovers()
                again, failures = self.store.recover_unfinished()
            except OSError as exc:
                failures = [exc]
            for exc in failures:
                log.error("could not recover the outputs folder at start: %s", exc)
                self.health.failed("the records of jobs unfinished at the last stop", exc)
        return again

    def write(self, event: str, snapshot: Callable[[], JobRecord | None]) -> None:
        """Record "accepted" or "started". ``snapshot`` gives the job as it is now (None: nothing to
        write), taken under this lock so that a late write can never roll a job back."""
        if self.store is None:
            return
        with self._lock:
            record = snapshot()
            if record is None:
                return
            try:
                getattr(self.store, event)(record)
                self.health.succeeded()
            except OSError as exc:
                self.health.failed(f"job {record.job_id}'s record", exc)
                log.error("could not record job %s on disk (%s): %s", record.job_id, event, exc)

    def finished(self, record: JobRecord, blobs: list[bytes]) -> tuple[list[str], str]:
        """Write a finished job's images and record; returns the files, and why they are not stored
        when the disk failed (then the outcome alone is recorded, if the disk takes that)."""
        if self.store is None:
            return [], ""
        with self._lock:
            try:
                self.store.finished(record, blobs)
                self.health.succeeded()
                return list(record.files), ""
            except OSError as exc:
                reason = self.health.failed(f"job {record.job_id}'s images", exc)
                log.error("could not store job %s on disk (its images stay in memory): %s", record.job_id, exc)
            try:
                self.store.finished_without_images(record, reason)
            except OSError as exc:
                log.error("could not record job %s's outcome on disk either: %s", record.job_id, exc)
            return [], reason

    def load(self, job_id: str, clock: float) -> Job | None:
        """A job the table no longer holds, back from its record; its age counts from when it finished."""
        record = self.store.load(job_id) if self.store is not None else None
        return self.job_of(record, clock) if record is not None else None

    def job_of(self, record: JobRecord, clock: float) -> Job:
        """A job read back from its record (see ``load``)."""
        if not record.state.terminal and record.created_at < self._started:
            # Unfinished at the last stop, and recovery could not write that down (a full disk):
            # lost all the same, never "running" on a server that is not running it.
            record.state, record.finished_at, record.error = JobState.FAILED, time.time(), errors.model_server_lost()
        job = Job.from_record(record)
        job.finished_mono = clock - max(0.0, time.time() - (record.finished_at or time.time()))
        return job

    def image(self, job: Job, index: int) -> bytes | None:
        return self.store.read_image(job.record(), index) if self.store is not None else None

    def delete(self, job_id: str) -> None:
        if self.store is not None:
            with self._lock:
                self.store.delete(job_id)

    def sweep(self, ttl_seconds: float, keep: set[str]) -> None:
        """Delete records past the TTL that this process never loaded (from earlier runs)."""
        if self.store is not None:
            with self._lock:
                self.store.delete_finished_before(time.time() - ttl_seconds, keep=keep)
