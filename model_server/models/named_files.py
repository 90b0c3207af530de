"""Files under a folder, named for their stem (LORA_DIR's LoRAs, UPSCALER_DIR's upscalers): listed again
only when the folder or a subfolder changes, so files copied in are usable at once and a listing asked
for on every submit costs a walk of the folders, not a stat of every file (``Rescanned``, which
CONTROLNET_DIR's listing uses too)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterator

from protocol.messages import MAX_NAME_LENGTH


class Rescanned:
    """What ``scan(folder)`` finds in ``folder``, scanned again only when the folder or a subfolder changes;
    empty without the folder."""

    def __init__(self, folder: str, scan: Callable[[Path], dict]):
        self.folder = Path(folder) if folder else None
        self._scan = scan
        self._lock = threading.Lock()
        self._listed: tuple[tuple, dict] = ((), {})

    def _stamp(self) -> tuple:
        # The folder's and its subfolders' modification times: what changes when a file comes or goes.
        try:
            return tuple(sorted((str(p), p.stat().st_mtime) for p in [self.folder, *self.folder.rglob("*")]
                                if p.is_dir()))
        except OSError:
            return ()

    def get(self) -> dict:
        if self.folder is None or not self.folder.is_dir():
            return {}
        stamp = self._stamp()
        with self._lock:
            if stamp != self._listed[0]:
                self._listed = (stamp, self._scan(self.folder))
            return self._listed[1]


class NamedFiles:
    """The files under ``folder`` that ``accepts``, by stem (the first in sorted order wins); hidden
    files and names longer than the protocol's bound never."""

    def __init__(self, folder: str, accepts: Callable[[Path], bool]):
        self.folder = Path(folder) if folder else None
        self._accepts = accepts
        self._listing = Rescanned(folder, self._scan)

    def _scan(self, folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for path in sorted(folder.rglob("*")):
            name = path.stem
            if (path.is_file() and not name.startswith(".") and len(name) <= MAX_NAME_LENGTH
                    and name not in found and self._accepts(path)):
                found[name] = path
        return found

    def files(self) -> dict[str, Path]:
        return self._listing.get()


def on_disk(files: dict[str, Path]) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Each listed file still there, with its stat; one removed since the listing is left out."""
    for name, path in files.items():
        try:
            yield name, path, path.stat()
        except OSError:
            continue
