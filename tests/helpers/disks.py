"""A small disk of the test's own: a tmpfs mounted on a folder, to fill or make read-only.

Mounting needs root (CI runs as root). Where it cannot, the test is skipped, unless
REQUIRE_TMPFS is set (as .ci/run does): then that is a failure, so CI can never skip it quietly.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


class SmallDisk:
    """A mounted tmpfs: ``fill`` it to the last byte, ``free`` it, flip it read-only and back."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._filler = folder / "filler"

    def fill(self) -> None:
        """Take every free byte (what ENOSPC is made of), in a file outside OUTPUTS_DIR's layout."""
        with open(self._filler, "ab", buffering=0) as file:
            for size in (65536, 4096, 1):  # then what smaller writes still find
                with contextlib.suppress(OSError):
                    while file.write(b"\0" * size):
                        pass

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def read_only(self, yes: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if yes else 'rw'}", str(self.folder)], check=True)


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int = 1024):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if os.environ.get("REQUIRE_TMPFS"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield SmallDisk(folder)
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
