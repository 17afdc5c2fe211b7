"""CPU accounting from /proc (Linux): per process, and for the whole machine."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of `pid` (0.0 if it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy() -> float:
    """CPU seconds every core spent not idle since boot (0.0 if unknown)."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of `pid` (default: this process), from /proc/PID/status."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class CpuWindow:
    """CPU used by some processes, and by everything else on the machine, over a window."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._busy = 0.0

    def __enter__(self) -> CpuWindow:
        self._start = {name: process_cpu(pid) for name, pid in self.pids.items()}
        self._busy = machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.used = {name: process_cpu(pid) - self._start[name] for name, pid in self.pids.items()}
        self.machine = machine_busy() - self._busy

    def others(self) -> float:
        """CPU seconds of processes not listed (other jobs sharing the machine)."""
        return max(0.0, self.machine - sum(self.used.values()))


def descendants(pid: int | None) -> list[int]:
    """Every live process below `pid`, from /proc (e.g. the workers and HAProxy of
    `claimroute proxy --workers`)."""
    if pid is None:
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def machine_info() -> dict[str, object]:
    """The cores this process may run on, the machine's cores, and the load averages."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "usable_cores": usable,
        "cpu_count": os.cpu_count(),
        "loadavg": [round(v, 2) for v in load],
    }
