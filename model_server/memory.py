"""Memory readings for the model server (no psutil needed): own RSS and peak, and how much the
machine or container still has available, so jobs are refused instead of OOM-killed mid-run;
and the libc calls that hand memory back."""

from __future__ import annotations

import ctypes
import gc
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


def release_memory() -> None:
    """Hand freed memory back to the OS: a finished job's activations (or an unloaded model) are freed by
    Python, but glibc keeps the pages; collecting cycles and trimming keeps resident memory flat."""
    gc.collect()
    trim_heap()


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _cgroup_room() -> int | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
            return max(0, int(limit) - usage)
    return None


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
