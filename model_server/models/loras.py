"""The LoRAs a job may apply: the ``.safetensors`` files under ``LORA_DIR``, named for the file.

The folder is listed again when it (or a subfolder) changes (``named_files``), so files copied in are
usable at once. A LoRA's hash is A1111's "addnet" hash (sha256 of the file after its header, the first 12
hex digits in infotexts' "Lora hashes"), computed once per file version and only when the LoRA is
first used: hashing a folder of hundreds of files at every listing would cost seconds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

from model_server.models.named_files import NamedFiles, on_disk
from protocol.messages import LoraEntry

log = logging.getLogger(__name__)

SHORT_HASH = 12


def addnet_hash(path: Path) -> str:
    """sha256 of a safetensors file's tensor bytes (after the 8-byte length and the JSON header)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        header = int.from_bytes(f.read(8), "little")
        f.seek(8 + header)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class LoraFiles:
    """The LoRA files by name, and their hashes once known."""

    def __init__(self, folder: str):
        # No character that ends an A1111 prompt tag (<lora:NAME:WEIGHT>) in a name.
        self._listing = NamedFiles(folder, lambda p: p.suffix == ".safetensors" and not any(c in p.stem for c in "<>:"))
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, float], str] = {}

    def files(self) -> dict[str, Path]:
        return self._listing.files()

    def find(self, name: str) -> Path | None:
        return self.files().get(name)

    def names(self) -> list[str]:
        return list(self.files())

    def short_hash(self, path: Path) -> str:
        """A1111's short hash of the file (computed once per version of the file)."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            known = addnet_hash(path)[:SHORT_HASH]
            with self._lock:
                self._hashes[key] = known
        return known

    def entries(self, loaded: set[str]) -> list[LoraEntry]:
        out = []
        for name, path, stat in on_disk(self.files()):
            with self._lock:
                known = self._hashes.get((str(path), stat.st_size, stat.st_mtime), "")
            out.append(LoraEntry(name=name, file=path.name, size_bytes=stat.st_size, hash=known,
                                 loaded=name in loaded))
        return out
