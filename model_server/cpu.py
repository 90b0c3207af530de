"""What this CPU can do, read at run time (torch-free): bf16 support and usable cores.

A user's laptop usually has AVX2 only; bf16 there is emulated and far slower than float32
(no UNet step finished in 7 minutes under ONEDNN_MAX_CPU_ISA=AVX2, see
docs/performance.md), so bfloat16 is chosen only where the hardware does it natively and
oneDNN is allowed to use it.
"""

from __future__ import annotations

import os
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bf16 instructions.
_BF16_ISAS = ("AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
              "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "ALL", "DEFAULT")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None, env=None) -> tuple[bool, str]:
    """Whether bf16 runs natively here, and why (shown in /health)."""
    env = os.environ if env is None else env
    flags = cpu_flags() if flags is None else flags
    have = [f for f in BF16_FLAGS if f in flags]
    if not have:
        return False, "cpu lacks amx_bf16/avx512_bf16"
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in _BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} excludes bf16 instructions"
    return True, f"cpu has {'+'.join(have)}"


def openvino_pays(bf16: bool, flags: set[str] | None = None, env=None) -> tuple[bool, str]:
    """Whether SD_BACKEND=auto runs the UNet on OpenVINO here, for a model in bf16 or not, and why.

    Measured (docs/performance.md): faster than torch in bf16 on AVX512-BF16 and AMX CPUs. In float32 (SD
    v1.4 on a real AVX2 CPU) 1.2x torch's step, but its compiled UNet is resident from the start (peak 4.85 against
    4.12 GiB) and needs a 3.4 GB IR, so float32 keeps torch unless asked (the 8 GB laptop's memory first), except
    for a UNet large enough to keep int8 weights on OpenVINO (openvino_backend.choose)."""
    if not bf16:
        return False, "float32 stays on torch, whose peak is lower"
    native, why = native_bf16(flags, env)
    if not native:
        return False, f"no measured gain without native bf16 ({why})"
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return False, "the openvino package is not installed"
    return True, f"measured faster with native bf16 ({why})"


def channels_last_pays(flags: set[str] | None = None, env=None) -> tuple[bool, str]:
    """Whether NHWC convolution weights are worth it here (SD_CHANNELS_LAST=auto), and why.

    Measured (docs/performance.md): with AMX, bf16 steps -7% and the VAE decode -41%; on an AMD
    CPU with AVX512-BF16 but no AMX, no gain in bf16. The weights are read into NHWC from the
    files, so it costs no memory either way.
    """
    env = os.environ if env is None else env
    flags = cpu_flags() if flags is None else flags
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if "amx_bf16" in flags and (not cap or "AMX" in cap or cap in ("ALL", "DEFAULT")):
        return True, "cpu has amx_bf16"
    return False, "no measured gain without AMX"


def usable_cores() -> int:
    """Physical cores this process may use: affinity, cgroup quota and SMT taken into account."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    physical = allowed
    try:
        import psutil

        logical, phys = psutil.cpu_count(), psutil.cpu_count(logical=False)
        if logical and phys and logical > phys:
            # Hyper-threads share a core's matmul units; one thread per core is faster.
            physical = max(1, allowed * phys // logical)
    except ImportError:
        pass
    quota = _cgroup_cpu_quota()
    if quota:
        physical = min(physical, max(1, int(quota)))
    return max(1, physical)


def _cgroup_cpu_quota() -> float | None:
    try:
        raw = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if raw and raw[0] != "max":
            return int(raw[0]) / int(raw[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None
