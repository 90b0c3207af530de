"""The table's side of the outputs folder: each job's record written in order, read back, deleted.

Disk work happens here, outside the table's lock; one lock of its own keeps the IO and worker
threads' writes in order. A full or broken disk costs a record, never a job. Without an
OutputStore (OUTPUTS_DIR empty) every method does nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from model_server.jobs.job import Job
from model_server.jobs.outputs import JobRecord, OutputStore

log = logging.getLogger(__name__)


class Records:
    """The job table's disk work, kept out of its lock and in order."""

    def __init__(self, store: OutputStore | None):
        self.store = store
        self._lock = threading.Lock()

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
            except OSError as exc:
                log.error("could not record job %s on disk (%s): %s", record.job_id, event, exc)

    def finished(self, record: JobRecord, blobs: list[bytes]) -> list[str]:
        """Write a finished job's images and record; returns the files (none if the disk failed)."""
        if self.store is None:
            return []
        with self._lock:
            try:
                self.store.finished(record, blobs)
                return list(record.files)
            except OSError as exc:
                log.error("could not record job %s on disk (finished): %s", record.job_id, exc)
                return []

    def load(self, job_id: str, clock: float) -> Job | None:
        """A job the table no longer holds, back from its record; its age counts from when it finished."""
        record = self.store.load(job_id) if self.store is not None else None
        if record is None:
            return None
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
