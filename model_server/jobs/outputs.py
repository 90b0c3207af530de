"""Finished images on disk, with a record per job, so nothing is lost to a restart.

Layout under OUTPUTS_DIR:
  YYYY-MM-DD/<job_id>-<index>.<ext>   the images (PNGs carry A1111 infotext)
  jobs/<job_id>.json                  the job's record: params, state, seeds, files, error
  pending/<job_id>                    present while a job is queued or running

A job the table no longer holds (evicted, or the server restarted) is read back from its record,
so its images stay fetchable by id. At start-up every ``pending`` job is marked failed with the
retryable ``model_server_lost``: it was accepted and never finished, and its client is told so.
The oldest outputs are deleted once their total passes OUTPUTS_BUDGET_BYTES.

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


class OutputStore:
    """The outputs folder: images, records and pending markers, within a byte budget."""

    def __init__(self, folder: str | Path, budget_bytes: int, peers: str | Path | None = None):
        self.folder = Path(folder).resolve()
        self.peers = Path(peers).resolve() if peers else None
        self._root = self.peers or self.folder  # paths from records must resolve inside it
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        for sub in ("jobs", "pending"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self._used = sum(p.stat().st_size for p in self.folder.glob("*/*-*.*") if p.is_file())

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
        path = self._record_path(record.job_id)
        tmp = path.with_name(f"{path.stem}.{threading.get_ident()}.tmp")
        tmp.write_bytes(msgspec.json.encode(record))
        os.replace(tmp, path)  # a crash never leaves half a record

    def accepted(self, record: JobRecord) -> None:
        self._write(record)
        (self.folder / "pending" / record.job_id).touch()

    def started(self, record: JobRecord) -> None:
        self._write(record)

    def finished(self, record: JobRecord, blobs: list[bytes]) -> None:
        """Write the images and the final record, then drop the pending marker."""
        day = time.strftime("%Y-%m-%d", time.localtime(record.finished_at or time.time()))
        files = []
        for info, data in zip(record.images, blobs):
            rel = f"{day}/{record.job_id}-{info.index}.{_EXT.get(info.media_type, 'bin')}"
            (self.folder / day).mkdir(exist_ok=True)
            (self.folder / rel).write_bytes(data)
            files.append(rel)
            with self._lock:
                self._used += len(data)
        record.files = files
        self._write(record)
        (self.folder / "pending" / record.job_id).unlink(missing_ok=True)
        self._enforce_budget()

    def load(self, job_id: str) -> JobRecord | None:
        try:
            return msgspec.json.decode(self._record_path(job_id).read_bytes(), type=JobRecord)
        except (OSError, ValueError, msgspec.DecodeError):  # ValueError: not a job id
            return self._load_from_peer(job_id)

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

    def recover_unfinished(self) -> list[str]:
        """Mark jobs that were queued or running when the server stopped as failed (retryable)."""
        lost = []
        for marker in (self.folder / "pending").iterdir():
            if not JOB_ID.match(marker.name):
                continue
            record = self.load(marker.name)
            if record is not None and not record.state.terminal:
                record.state, record.finished_at = JobState.FAILED, time.time()
                record.error = errors.model_server_lost()
                self._write(record)
                lost.append(record.job_id)
            marker.unlink(missing_ok=True)
        if lost:
            log.warning("%d job(s) were unfinished when the model server stopped; marked failed: %s",
                        len(lost), ", ".join(lost))
        return lost

    def _enforce_budget(self) -> None:
        if self._used <= self.budget_bytes:
            return
        for path in sorted(self.folder.glob("jobs/*.json"), key=lambda p: p.stat().st_mtime):
            if self._used <= self.budget_bytes:
                break
            if JOB_ID.match(path.stem):
                self.delete(path.stem)
                log.info("outputs over budget: deleted job %s", path.stem)
