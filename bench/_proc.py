"""What a process costs, read from /proc: CPU of itself and its descendants, resident memory, threads.

Descendants matter because Mitogen and OpenSSH do their encryption in ``ssh`` child processes, which
``time.process_time()`` of the controller would not see.
"""

from __future__ import annotations

import os
import time
from typing import Optional

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Optional[list[str]]:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parent_of[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = {pid}
    while frontier:
        kids = {p for p, pp in parent_of.items() if pp in frontier and p not in found}
        found.extend(sorted(kids))
        frontier = kids
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its threads included), 0 when it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children_cpu(pid: Optional[int] = None) -> dict[int, float]:
    """{pid: cpu seconds} of the live descendants of ``pid`` (default: this process)."""
    return {p: cpu_seconds(p) for p in descendants(pid if pid is not None else os.getpid())}


def children_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU the descendants spent between two snapshots (processes born in between count whole)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def status(pid: Optional[int] = None) -> dict[str, int]:
    """VmRSS (KiB) and Threads of a process from /proc/PID/status; {} when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


class CpuMeter:
    """Process CPU (all threads) plus descendants' CPU over a block of work, and its wall time."""

    def __enter__(self) -> CpuMeter:
        self.kids0 = children_cpu()
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0
        self.children = children_cpu_delta(self.kids0, children_cpu())
