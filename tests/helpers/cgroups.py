"""A memory cgroup of a test's own, as ``docker run --memory`` or a Kubernetes limit puts a model server in.

Made under this process's own memory cgroup (v2's unified hierarchy, else v1's memory controller), which needs
the right to write there (root in this sandbox and in CI). Where that is impossible the test skips, unless
REQUIRE_CGROUP is set (as .ci/run does): then that is a failure, so CI can never skip it quietly.
"""

from __future__ import annotations

import os
import time
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
        name = f"sd-test-{uuid.uuid4().hex[:8]}"
        places = []
        v2 = _own("")
        if v2 is not None and (ROOT / "cgroup.controllers").exists():
            # v2: under this process's own cgroup, else under the root (a cgroup with processes in it cannot
            # hand the memory controller to a child).
            for parent in dict.fromkeys((ROOT / v2.lstrip("/"), ROOT)):
                places.append((parent / name, "memory.max", "memory.events"))
        v1 = _own("memory")
        if v1 is not None:
            places.append((ROOT / "memory" / v1.lstrip("/") / name, "memory.limit_in_bytes", "memory.oom_control"))
        failures = []
        for folder, limit_file, events in places:
            try:
                folder.mkdir()
            except OSError as exc:
                failures.append(f"{folder}: {exc}")
                continue
            self.folder, self.limit_file, self.events = folder, limit_file, events
            try:
                self.set_limit(limit_bytes)
                return
            except OSError as exc:  # no memory controller there
                failures.append(f"{folder}: {exc}")
                folder.rmdir()
        raise OSError("; ".join(failures) or "no memory cgroup controller")

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
        for _ in range(50):  # the killed processes leave it a moment later
            try:
                self.folder.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def memory_cgroup(limit_bytes: int) -> MemoryCgroup:
    try:
        return MemoryCgroup(limit_bytes)
    except OSError as exc:
        if os.environ.get("REQUIRE_CGROUP"):
            pytest.fail(f"REQUIRE_CGROUP is set but no memory cgroup can be made here: {exc}")
        pytest.skip(f"no memory cgroup can be made here ({exc}); CI sets REQUIRE_CGROUP")
