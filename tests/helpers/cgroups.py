"""A memory cgroup of a test's own, as ``docker run --memory`` or a Kubernetes limit puts a model server in.

Made under this process's own memory cgroup (v2's unified hierarchy, else v1's memory controller), which needs
the right to write there (root in this sandbox and in CI). Where that is impossible the test skips, unless
REQUIRE_CGROUP is set (as .ci/run does): then that is a failure, so CI can never skip it quietly.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")


def _own(controllers: str) -> str | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names == controllers or controllers in names.split(","):
            return path
    return None


class MemoryCgroup:
    """A child memory cgroup with a limit; processes join it by writing their pid (``join_command``)."""

    def __init__(self, limit_bytes: int):
        v2 = _own("")
        if v2 is not None and (ROOT / "cgroup.controllers").exists() and "memory" in (
                ROOT / "cgroup.controllers").read_text().split():
            self.folder = ROOT / v2.lstrip("/") / f"sd-test-{uuid.uuid4().hex[:8]}"
            self.limit_file, self.events = "memory.max", "memory.events"
        else:
            v1 = _own("memory")
            if v1 is None:
                raise OSError("no memory cgroup controller")
            self.folder = ROOT / "memory" / v1.lstrip("/") / f"sd-test-{uuid.uuid4().hex[:8]}"
            self.limit_file, self.events = "memory.limit_in_bytes", "memory.oom_control"
        self.folder.mkdir()
        self.set_limit(limit_bytes)

    def set_limit(self, limit_bytes: int) -> None:
        (self.folder / self.limit_file).write_text(str(limit_bytes))

    def join_command(self, args: list[str]) -> list[str]:
        """``args`` run inside the cgroup: the shell moves itself in, then becomes the command."""
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        return ["sh", "-c", f"echo $$ > '{self.folder}/cgroup.procs' && exec {quoted}"]

    def oom_kills(self) -> int:
        for line in (self.folder / self.events).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        for pid in (self.folder / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        try:
            self.folder.rmdir()
        except OSError:
            pass


def memory_cgroup(limit_bytes: int) -> MemoryCgroup:
    try:
        return MemoryCgroup(limit_bytes)
    except OSError as exc:
        if os.environ.get("REQUIRE_CGROUP"):
            pytest.fail(f"REQUIRE_CGROUP is set but no memory cgroup can be made here: {exc}")
        pytest.skip(f"no memory cgroup can be made here ({exc}); CI sets REQUIRE_CGROUP")
