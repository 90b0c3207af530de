"""The memory budget a model server keeps: how much resident memory its jobs may reach at their peak.

MEMORY_BUDGET is a size (``6GiB``, ``6144MB``, bytes), a share of the machine's RAM (``80%``), ``off``, or
``auto`` (the default): the process's cgroup memory limit when one is set (a container's ``--memory``, a
Kubernetes limit, ``systemd-run -p MemoryMax``) less a margin for what the kernel charges beside our pages,
else a share of physical RAM that leaves the desktop and the gateway room. A job whose predicted peak
(model_server.jobs.footprint) is over the budget is refused at submit, naming what to lower, instead of being
OOM-killed mid-run with every job queued behind it.
"""

from __future__ import annotations

import dataclasses
import re

from model_server import memory

# auto: a cgroup limit counts page cache and kernel memory too (v1 charges the model files' page cache to it),
# so a margin stays free under it; without a limit, the rest of the machine (desktop, browser, the gateway)
# keeps its share of RAM.
CGROUP_SHARE = 0.9
RAM_SHARE = 0.85
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": 2**20, "mb": 10**6, "mib": 2**20,
          "g": 2**30, "gb": 10**9, "gib": 2**30, "t": 2**40, "tb": 10**12, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Budget:
    """The budget in bytes (0: none kept) and where it came from, as /health says it."""

    bytes: int
    source: str


def parse(raw: str) -> str:
    """MEMORY_BUDGET checked at start (the value kept as written); ValueError saying the accepted forms."""
    value = raw.strip().lower()
    if value in ("", "auto", "off"):
        return value or "auto"
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = -1.0
        if not 1 <= share <= 100:
            raise ValueError(f"MEMORY_BUDGET as a share of RAM must be 1% to 100%, got {raw!r}")
        return value
    match = _SIZE.match(value)
    if match is None or match.group(2) not in _UNITS:
        raise ValueError(f"MEMORY_BUDGET must be auto, off, a share of RAM (80%) or a size (6GiB, 6144MB), got {raw!r}")
    if float(match.group(1)) * _UNITS[match.group(2)] < 256 * 2**20:
        raise ValueError(f"MEMORY_BUDGET {raw!r} is under 256 MiB: no model fits it (off turns the budget off)")
    return value


_READ: object = object()  # read this machine's (tests pass their own)


def resolve(setting: str, cgroup: tuple[int, int] | None | object = _READ, ram: int | None = None) -> Budget:
    """The budget MEMORY_BUDGET gives on this machine (its cgroup limit and RAM read now unless given)."""
    value = parse(setting)
    if value == "off":
        return Budget(0, "off (MEMORY_BUDGET)")
    ram = memory.physical_bytes() if ram is None else ram
    if value.endswith("%"):
        share = float(value[:-1]) / 100
        return Budget(int(ram * share), f"{value} of {ram / 2**30:.1f} GiB RAM (MEMORY_BUDGET)")
    if value != "auto":
        match = _SIZE.match(value)
        return Budget(int(float(match.group(1)) * _UNITS[match.group(2)]), "MEMORY_BUDGET")
    cgroup = memory.cgroup_memory() if cgroup is _READ else cgroup
    if cgroup is not None and (not ram or cgroup[0] < ram):
        return Budget(int(cgroup[0] * CGROUP_SHARE),
                      f"{CGROUP_SHARE:.0%} of the cgroup memory limit, {cgroup[0] / 2**30:.2f} GiB")
    if not ram:
        return Budget(0, "none (neither a cgroup limit nor the RAM size could be read)")
    return Budget(int(ram * RAM_SHARE), f"{RAM_SHARE:.0%} of {ram / 2**30:.1f} GiB RAM")
