"""Resident memory of this process (and of others, by PID), for flat-memory checks and
benchmarks. Linux ``/proc`` figures; on other systems ``resident_mib`` falls back to the
peak that ``resource`` reports and the per-PID figures are unavailable (NaN)."""

from __future__ import annotations

import math
import resource
import sys
from pathlib import Path


def _status_kib(key: str, pid: int | str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def resident_mib(pid: int | str = "self") -> float:
    """``VmRSS`` now, in MiB (NaN for a process that is gone)."""
    kib = _status_kib("VmRSS", pid)
    if math.isnan(kib) and pid == "self":
        return peak_mib()
    return kib / 1024


def peak_mib() -> float:
    """This process's resident high-water mark so far, in MiB."""
    kib = _status_kib("VmHWM")
    if math.isnan(kib):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = peak / 1024 if sys.platform == "darwin" else peak  # macOS reports bytes, Linux KiB
    return kib / 1024


def reset_peak() -> float:
    """Reset the kernel's high-water mark (Linux >= 4.0) so ``peak_mib`` measures from now;
    returns the resident MiB now."""
    Path("/proc/self/clear_refs").write_text("5")
    return resident_mib()


def total_resident_mib(pids: list[int]) -> float:
    """Summed ``VmRSS`` of ``pids`` that are still running, in MiB."""
    return sum(m for m in (resident_mib(p) for p in pids) if not math.isnan(m))
