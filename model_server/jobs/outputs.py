"""Finished images on disk, with a record per job, so nothing is lost to a restart.

Layout under OUTPUTS_DIR:
  YYYY-MM-DD/<job_id>-<index>.<ext>   the images (PNGs carry A1111 infotext)
  jobs/<job_id>.json                  the job's record: params, state, seeds, files, error
  pending/<job_id>                    present while a job is queued or running

A job the table no longer holds (evicted, or the server restarted) is read back from its record,
so its images stay fetchable by id. At start-up a ``pending`` job that never started is queued
again under its id when it needs nothing but its record (text-to-image: its params are all
there), or waits for its gateway to send its uploads again (which lived in memory only); one that
was running is marked failed with the retryable ``model_server_lost``, and its client is told so.
The oldest outputs are deleted once their total passes OUTPUTS_BUDGET_BYTES.

Every file is written whole or not at all (``disk.atomic_write``), images before the record that
names them, so a record never points at a partial image. What a crash or a full disk can still
leave (temporary files, images no record names, images cut short by an older version, markers of
finished jobs) is removed at start (``clean_leftovers``), and recovery skips what it cannot write.

Replicas on shared storage each have their own folder under one ``peers`` folder. A job none of
them holds in memory may be a finished job of a lost replica: its record and images are read from
that replica's folder (only finished ones: an unfinished record there is a job that died with it,
or one placed again elsewhere, and its own server answers for it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

import msgspec

from model_server import errors
from model_server.jobs.disk import PROBE_NAME, TMP_SUFFIX, atomic_write, is_whole_image, probe_writable
from protocol.messages import JOB_ID_PATTERN, ErrorInfo, GenerationParams, ImageInfo, JobState, ModelSwitch

log = logging.getLogger(__name__)
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# Job ids are 32 hex digits (protocol.messages.JOB_ID_PATTERN); anything else never becomes a path.
JOB_ID = re.compile(JOB_ID_PATTERN)


class JobRecord(msgspec.Struct, kw_only=True):
    """A job as written to ``jobs/<id>.json``: enough to answer for it after a restart."""

    job_id: str
    state: JobState
    params: GenerationParams
    created_at: float
    client_id: str = ""
    request_id: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    error: ErrorInfo | None = None
    images: list[ImageInfo] = []
    files: list[str] = []
    interrupted: bool = False
    engine: str = ""
    model: str = ""
    model_switch: ModelSwitch | None = None
    lora_hashes: dict[str, str] = {}
    not_stored: str = ""  # why the images are not on disk (the write failed): they were lost at a restart


class OutputStore:
    """The outputs folder: images, records and pending markers, within a byte budget."""

    def __init__(self, folder: str | Path, budget_bytes: int, peers: str | Path | None = None):
        self.folder = Path(folder).resolve()
        self.peers = Path(peers).resolve() if peers else None
        self._root = self.peers or self.folder  # paths from records must resolve inside it
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        probe_writable(self.folder)  # read-only or not ours: StorageUnusable, a configuration error
        for sub in ("jobs", "pending"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._used = self._images_size()

    def _images_size(self) -> int:
        return sum(p.stat().st_size for p in self._image_files() if p.is_file())

    def _image_files(self):
        return (p for p in self.folder.glob("*/*-*.*") if p.parent.name not in ("jobs", "pending", "webhooks")
                and not p.name.startswith("."))

    def _record_path(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id[:64]!r}")
        return self.folder / "jobs" / f"{job_id}.json"

    def _inside(self, rel: str) -> Path:
        """A path from a record, refused unless it resolves inside the outputs folder."""
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self._root) or path == self.folder:
            raise ValueError(f"path outside the outputs folder: {rel[:200]!r}")
        return path

    def _write(self, record: JobRecord) -> None:
        atomic_write(self._record_path(record.job_id), msgspec.json.encode(record))

    def accepted(self, record: JobRecord) -> None:
        self._write(record)
        (self.folder / "pending" / record.job_id).touch()

    def started(self, record: JobRecord) -> None:
        self._write(record)

    def finished(self, record: JobRecord, blobs: list[bytes]) -> None:
        """Write the images, then the final record, then drop the pending marker. When an image
        cannot be written, those already written go again and the error is raised: the caller
        records the outcome without images (``finished_without_images``)."""
        day = time.strftime("%Y-%m-%d", time.localtime(record.finished_at or time.time()))
        files = []
        try:
            for info, data in zip(record.images, blobs):
                rel = f"{day}/{record.job_id}-{info.index}.{_EXT.get(info.media_type, 'bin')}"
                (self.folder / day).mkdir(exist_ok=True)
                atomic_write(self.folder / rel, data)
                files.append(rel)
                with self._lock:
                    self._used += len(data)
            record.files = files
            self._write(record)
        except OSError:
            self._delete_files(files)
            record.files = []
            raise
        (self.folder / "pending" / record.job_id).unlink(missing_ok=True)
        self._enforce_budget()

    def finished_without_images(self, record: JobRecord, reason: str) -> None:
        """Record a finished job whose images could not be stored, so a restart reports its outcome
        (its images then answer "gone") rather than calling it lost."""
        record.files, record.not_stored = [], reason
        self._write(record)
        (self.folder / "pending" / record.job_id).unlink(missing_ok=True)

    def load(self, job_id: str) -> JobRecord | None:
        try:
            return msgspec.json.decode(self._record_path(job_id).read_bytes(), type=JobRecord)
        except (OSError, ValueError, msgspec.DecodeError):  # ValueError: not a job id
            return self._load_from_peer(job_id)

    def ended_since(self, cutoff: float):
        """This folder's records of jobs that ended at or after ``cutoff`` (wall clock)."""
        for path in self.folder.glob("jobs/*.json"):
            record = self.load(path.stem) if JOB_ID.match(path.stem) else None
            if record is not None and record.state.terminal and (record.finished_at or 0.0) >= cutoff:
                yield record

    def _peer_records(self, job_id: str) -> list[Path]:
        if self.peers is None or not JOB_ID.match(job_id):
            return []
        return [p for p in self.peers.glob(f"*/jobs/{job_id}.json") if p.parent.parent != self.folder]

    def _load_from_peer(self, job_id: str) -> JobRecord | None:
        return next(filter(None, map(self._read_peer, self._peer_records(job_id))), None)

    def _read_peer(self, path: Path) -> JobRecord | None:
        """A peer's record at ``path`` if it is finished, its files as seen from our folder (checked
        by _inside on use)."""
        try:
            record = msgspec.json.decode(path.read_bytes(), type=JobRecord)
        except (OSError, msgspec.DecodeError):
            return None
        if not record.state.terminal:
            return None
        record.files = [os.path.relpath(path.parent.parent / rel, self.folder) for rel in record.files]
        return record

    def read_image(self, record: JobRecord, index: int) -> bytes | None:
        try:
            return self._inside(record.files[index]).read_bytes()
        except (OSError, IndexError, ValueError):
            return None

    def delete(self, job_id: str) -> None:
        """Delete a job's images, record and marker (a deleted or expired job)."""
        record = self.load(job_id)
        self._delete_files(record.files if record else ())
        self._record_path(job_id).unlink(missing_ok=True)
        for path in self._peer_records(job_id):  # a lost replica's finished job, deleted by its owner
            path.unlink(missing_ok=True)
        (self.folder / "pending" / job_id).unlink(missing_ok=True)

    def delete_finished_before(self, cutoff: float, keep: set[str] = frozenset()) -> list[str]:
        """Delete every finished job that ended before ``cutoff`` (wall clock), except ``keep``."""
        gone = []
        for path in self.folder.glob("jobs/*.json"):
            if path.stem in keep or not JOB_ID.match(path.stem):
                continue
            record = self.load(path.stem)
            if record is not None and record.state.terminal and (record.finished_at or cutoff) < cutoff:
                self.delete(path.stem)
                gone.append(path.stem)
        # A lost replica's folder has nobody of its own to sweep it (compose gives a recreated
        # container a new name): every replica shares the TTL, so any of them may.
        for path in self.peers.glob("*/jobs/*.json") if self.peers else ():
            if path.parent.parent == self.folder or not JOB_ID.match(path.stem):
                continue
            record = self._read_peer(path)  # the record found by the glob, not looked for again
            if record is not None and (record.finished_at or cutoff) < cutoff:
                self.delete(path.stem)
                gone.append(path.stem)
        if gone:
            log.info("deleted %d job(s) past RESULT_TTL_SECONDS", len(gone))
        return gone

    def _delete_files(self, files) -> None:
        for rel in files:
            try:
                file = self._inside(rel)
                size = file.stat().st_size if file.is_relative_to(self.folder) else 0  # a peer's: not in our budget
                file.unlink()
            except (OSError, ValueError):
                continue
            with self._lock:
                self._used -= size

    def recover_unfinished(self) -> tuple[list[JobRecord], list[OSError]]:
        """Jobs unfinished when the server stopped: those that never started are returned (marker
        and record stay) to be queued again, or to wait for their uploads; the others are marked
        failed (retryable). A record that cannot be written keeps its marker (the next start tries
        again) and its error is returned: recovery never stops the server from starting."""
        lost, again, failures = [], [], []
        for marker in (self.folder / "pending").iterdir():
            if not JOB_ID.match(marker.name):
                continue
            record = self.load(marker.name)
            if record is not None and record.state is JobState.QUEUED:
                again.append(record)
                continue
            try:
                if record is not None and not record.state.terminal:
                    record.state, record.finished_at = JobState.FAILED, time.time()
                    record.error = errors.model_server_lost()
                    self._write(record)
                    lost.append(record.job_id)
                marker.unlink(missing_ok=True)
            except OSError as exc:
                failures.append(exc)
        if lost:
            log.warning("%d job(s) were unfinished when the model server stopped; marked failed: %s",
                        len(lost), ", ".join(lost))
        return sorted(again, key=lambda r: r.created_at), failures

    def clean_leftovers(self) -> int:
        """Remove what a crash or a full disk left: temporary files, images that no record names or
        that were cut short (their record then says so), and markers whose job is finished or
        unknown. Returns how many files went. Run at start, before anything is written."""
        gone = 0

        def remove(path: Path) -> None:
            nonlocal gone
            try:
                path.unlink()
                gone += 1
            except FileNotFoundError:
                pass

        for path in self.folder.glob(f"*/*{TMP_SUFFIX}"):
            remove(path)
        remove(self.folder / PROBE_NAME)
        named: set[Path] = set()
        for path in self.folder.glob("jobs/*.json"):
            record = self.load(path.stem) if JOB_ID.match(path.stem) else None
            if record is None:
                continue
            whole = [rel for rel, info in zip(record.files, record.images)
                     if self._is_ours(rel) and is_whole_image(self.folder / rel, info.media_type)]
            if len(whole) != len(record.files):
                cut = len(record.files) - len(whole)
                record.files = whole
                record.not_stored = record.not_stored or f"{cut} image(s) were found incomplete on disk after a crash"
                self._write(record)
            named.update(self.folder / rel for rel in whole)
        for path in list(self._image_files()):
            if path not in named:
                remove(path)
        for marker in (self.folder / "pending").iterdir():
            record = self.load(marker.name) if JOB_ID.match(marker.name) else None
            if record is None or record.state.terminal:
                remove(marker)
        if gone:
            log.warning("removed %d leftover file(s) from OUTPUTS_DIR (temporary, incomplete or orphaned)", gone)
        self._used = self._images_size()
        return gone

    def _is_ours(self, rel: str) -> bool:
        try:
            return self._inside(rel).is_relative_to(self.folder)
        except ValueError:
            return False

    def _enforce_budget(self) -> None:
        if self._used <= self.budget_bytes:
            return
        for path in sorted(self.folder.glob("jobs/*.json"), key=lambda p: p.stat().st_mtime):
            if self._used <= self.budget_bytes:
                break
            if JOB_ID.match(path.stem):
                self.delete(path.stem)
                log.info("outputs over budget: deleted job %s", path.stem)
