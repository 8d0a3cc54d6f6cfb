"""CPU seconds of process groups, read from /proc (Linux), for bench/compare.py.

A group is either a session (a service started with its own session: the api, the workers
and every process they fork) or a server's main process and its children (the PostgreSQL
postmaster and its backends, RabbitMQ's beam.smp): not every process of that name, since
other users' tests start and stop servers of their own. Each process counts utime + stime
plus the cutime + cstime of its children that already exited, so a backend that ends
between two snapshots still counts through its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    name: str
    parent: int
    session: int
    cpu_seconds: float


def read_all() -> list[ProcStat]:
    """One line per live process: name, session and CPU seconds so far."""
    stats = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is field 3 of proc(5): session is field 6, utime..cstime fields 14-17.
        ticks = sum(int(f) for f in fields[11:15])
        stats.append(ProcStat(int(entry.name), name, int(fields[1]), int(fields[3]), ticks / TICKS))
    return stats


def snapshot(sessions: dict[str, set[int]], trees: dict[str, int]) -> dict[str, float]:
    """CPU seconds per group: `sessions` maps a group to its session ids, `trees` to the pid
    of a server's main process (itself and its direct children count)."""
    stats = read_all()
    result = {group: 0.0 for group in [*sessions, *trees]}
    for stat in stats:
        for group, session in sessions.items():
            if stat.session in session:
                result[group] += stat.cpu_seconds
        for group, root in trees.items():
            if root in (stat.pid, stat.parent):
                result[group] += stat.cpu_seconds
    return result


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {group: after[group] - before.get(group, 0.0) for group in after}
