"""Writing the outputs folder safely, and what the server knows of its health.

Results are a cache, not a reason to stop serving: a write that fails costs the disk copy, never
the job. ``atomic_write`` makes sure a file is either whole or absent (temp, fsync, rename), so a
record never points at half an image; ``StorageHealth`` remembers the last failure (and the free
space below its mark) for ``/health`` and ``/metrics`` until a later write succeeds.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from protocol.messages import StorageStatus

log = logging.getLogger(__name__)
TMP_SUFFIX = ".tmp"  # every temporary file here ends so; anything left with it is a crash's leftover
PROBE_NAME = ".write-probe"  # written and removed at start to learn whether the folder takes writes
# The errors that mean "this folder is not ours to write", as opposed to "full for now".
NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class StorageUnusable(ValueError):
    """OUTPUTS_DIR cannot be written at start: a configuration error, not a crash to retry."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, flushed to the
    disk, then renamed over it. On failure the temporary file is removed and the error raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the rename must never land before the bytes do
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def probe_writable(folder: Path) -> None:
    """Raise StorageUnusable when ``folder`` cannot be created or written for good (read-only,
    permissions); a full disk is not that (it frees up), so ENOSPC only logs."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / PROBE_NAME, b"ok")
        (folder / PROBE_NAME).unlink()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            log.error("OUTPUTS_DIR %s is full: results are kept in memory until it has room", folder)
            return
        hint = (f"make it writable by user id {os.getuid()}" if exc.errno in NOT_WRITABLE
                else "check the path")
        raise StorageUnusable(f"OUTPUTS_DIR {folder} cannot be written ({exc.strerror or exc}): {hint}, "
                              "or set OUTPUTS_DIR to another folder (empty keeps results in memory only)") from exc


def is_whole_image(path: Path, media_type: str) -> bool:
    """Whether an image file ends as its format says it must (a crash mid-write leaves it short)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return False
        with open(path, "rb") as file:
            if media_type == "image/png":
                file.seek(max(0, size - 8))
                return file.read() == b"IEND\xaeB`\x82"
            if media_type == "image/jpeg":
                file.seek(max(0, size - 2))
                return file.read() == b"\xff\xd9"
            if media_type == "image/webp":
                head = file.read(8)
                return head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size
    except OSError:
        return False
    return True


class StorageHealth:
    """The outputs folder's health: ok, or the last failure's reason; and the free-space mark."""

    def __init__(self, folder: Path, min_free_bytes: int = 0):
        self.folder = folder
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._failure = ""  # the last failed write's reason; cleared by a write that succeeds
        self._failed_at = 0.0
        self.errors = 0  # failed writes since start (a /metrics counter)

    def failed(self, what: str, exc: OSError) -> str:
        reason = f"could not write {what} to OUTPUTS_DIR: {exc.strerror or exc}"
        with self._lock:
            self.errors += 1
            self._failure, self._failed_at = reason, time.time()
        return reason

    def succeeded(self) -> None:
        with self._lock:
            self._failure = ""

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.folder).free
        except OSError:
            return None

    def low_on_space(self, free: int | None = None) -> tuple[int, int] | None:
        """(free MB, mark MB) when the folder's disk has less free space (``free``, else looked up)
        than the mark."""
        free = self.free_bytes() if free is None else free
        if not self.min_free_bytes or free is None or free >= self.min_free_bytes:
            return None
        return free // 2**20, self.min_free_bytes // 2**20

    def status(self) -> StorageStatus:
        free = self.free_bytes()
        with self._lock:
            reason, count = self._failure, self.errors
            failed_at = self._failed_at if reason else None
        low = self.low_on_space(free)
        if not reason and low is not None:
            reason = f"only {low[0]} MB free on the outputs disk (MIN_FREE_DISK_MB is {low[1]}): new jobs are refused"
        return StorageStatus(ok=not reason, reason=reason, errors=count, free_bytes=free,
                             min_free_bytes=self.min_free_bytes, failed_at=failed_at)
