"""A table of measurements kept per host in SD_CACHE_DIR, one JSON file per machine (its name carries a digest of
what makes the measurements comparable): read once at start, written whole after each change, the oldest entry
dropped past a bound. What the measured speeds (speed.py) and peaks (peaks.py) share."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, TypeVar

import msgspec

from model_server.jobs.disk import atomic_write

log = logging.getLogger(__name__)
E = TypeVar("E")


class HostFile:
    """``{prefix}-{digest of host_key}.json`` in ``folder`` (None: kept in memory only), holding a list of ``kind``."""

    def __init__(self, folder: str | Path | None, prefix: str, host_key: str, kind: type, what: str):
        digest = hashlib.sha256(host_key.encode()).hexdigest()[:12]
        self.path = Path(folder) / f"{prefix}-{digest}.json" if folder else None
        self._kind, self._what = kind, what

    def read(self) -> list:
        """The entries kept, or none when there is no file or it cannot be read (measured afresh, never fatal)."""
        if self.path is None or not self.path.exists():
            return []
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=list[self._kind])
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("measured %s in %s cannot be read; measuring afresh: %s", self._what, self.path, exc)
            return []

    def write(self, data: bytes) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)
        except OSError as exc:
            log.warning("measured %s not kept on disk: %s", self._what, exc)


def bounded(entries: dict, most: int, when: Callable[[E], float]) -> bytes:
    """Drop the oldest entry past ``most`` (one per call: entries come one at a time); the table encoded, oldest
    first, for ``HostFile.write``."""
    if len(entries) > most:
        del entries[min(entries, key=lambda k: when(entries[k]))]
    return msgspec.json.encode(sorted(entries.values(), key=when))
