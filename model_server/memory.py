"""Memory readings for the model server (no psutil needed): own RSS and peak, and how much the
machine or container still has available, so jobs are refused instead of OOM-killed mid-run;
and the libc calls that hand memory back."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import threading
from pathlib import Path

_PAGE = resource.getpagesize()


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # not glibc Linux: nothing to trim or release
        return None


LIBC = _libc()  # loaded once; used to trim the heap and to drop mapped weight pages (residency.py)


def trim_heap() -> None:
    """Return the heap's free pages to the OS: glibc keeps freed activations' pages otherwise."""
    trim = getattr(LIBC, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


_RELEASERS: list = []  # what else holds memory between jobs that it can give back (on_release)


def on_release(release) -> None:
    """Have ``release_memory`` call ``release()`` first: a runtime's own buffers (OpenVINO's compiled models keep
    their activations' memory after the last call until told; engine/openvino_compiled.py)."""
    _RELEASERS.append(release)


def release_memory() -> None:
    """Hand freed memory back to the OS: a finished job's activations (or an unloaded model) are freed by
    Python, but glibc keeps the pages; collecting cycles and trimming keeps resident memory flat. Called on the
    worker's thread between jobs, never while one runs a model."""
    for release in _RELEASERS:
        release()
    gc.collect()
    trim_heap()


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _cgroup_folders(proc_cgroup: str, root: str) -> list[tuple[Path, str, str]]:
    """(folder, limit file, usage file) for this process's memory cgroup and each of its ancestors, v2 and v1.

    A process in a container sees its own cgroup as the root; one started in a child cgroup on a host (as
    ``systemd-run -p MemoryMax`` or a test does) sees its path in /proc/self/cgroup, and any ancestor's
    limit binds it too: every level that exists is read."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    found: list[tuple[Path, str, str]] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2's unified hierarchy
            base, limit, usage = Path(root), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            base, limit, usage = Path(root) / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        for depth in range(len(parts), -1, -1):
            found.append((base.joinpath(*parts[:depth]), limit, usage))
    for base, limit, usage in ((Path(root), "memory.max", "memory.current"),
                               (Path(root) / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes")):
        found.append((base, limit, usage))  # a container's own cgroup, mounted as the root
    return list(dict.fromkeys(found))


def cgroup_memory(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """(limit, usage) of the tightest memory limit over this process (its cgroup or an ancestor's), or None
    when no limit is set ("max", or v1's huge number)."""
    best: tuple[int, int] | None = None
    for folder, limit_name, usage_name in _cgroup_folders(proc_cgroup, root):
        try:
            limit = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60 and (best is None or int(limit) < best[0]):
            best = (int(limit), usage)
    return best


def physical_bytes() -> int:
    """The machine's RAM (0 when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _cgroup_room() -> int | None:
    found = cgroup_memory()
    return None if found is None else max(0, found[0] - found[1])


def available_bytes() -> int | None:
    """MemAvailable, or the room left under a container memory limit if that is smaller."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError):
        pass
    room = _cgroup_room()
    if room is not None:
        available = room if available is None else min(available, room)
    return available


class PeakSampler:
    """The largest RSS seen while a block runs, sampled every ``interval`` seconds on a thread of its own
    (the process's own peak cannot be reset per job without losing it for /health)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def start(self) -> "PeakSampler":
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def stop(self) -> int:
        """The peak; safe to call more than once, or without a start."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return self.peak
