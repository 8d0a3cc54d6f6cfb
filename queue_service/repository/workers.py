"""worker_processes and maintenance_state: who is alive, and when maintenance last ran.

A worker process writes only its own row (its heartbeat), so heartbeats never contend;
maintenance_state is written by the pass that holds the maintenance advisory lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa


def heartbeat(
    conn: sa.Connection,
    *,
    name: str,
    role: str,
    host: str,
    pid: int,
    metrics_port: int | None,
    now: datetime,
    threads: int | None = None,
    busy_threads: int | None = None,
) -> None:
    """Say this process is alive: an upsert of its own row (it comes back if deleted),
    with its worker threads and how many of them run a job's handler right now."""
    conn.execute(
        sa.text(
            "INSERT INTO worker_processes "
            "(name, role, host, pid, started_at, heartbeat_at, metrics_port, threads, "
            " busy_threads) "
            "VALUES (:name, :role, :host, :pid, :now, :now, :port, :threads, :busy) "
            "ON CONFLICT (name) DO UPDATE SET heartbeat_at = :now, metrics_port = :port, "
            "  threads = :threads, busy_threads = :busy"
        ),
        {
            "name": name,
            "role": role,
            "host": host,
            "pid": pid,
            "now": now,
            "port": metrics_port,
            "threads": threads,
            "busy": busy_threads,
        },
    )


def unregister(conn: sa.Connection, name: str) -> None:
    conn.execute(sa.text("DELETE FROM worker_processes WHERE name = :name"), {"name": name})


def forget_silent(conn: sa.Connection, before: datetime) -> int:
    """Drop rows of processes that stopped without saying so (kill -9, lost machine)."""
    result = conn.execute(
        sa.text("DELETE FROM worker_processes WHERE heartbeat_at < :before"), {"before": before}
    )
    return int(result.rowcount)


def live_workers(conn: sa.Connection, now: datetime, stale_after: timedelta) -> Sequence[Any]:
    """Processes whose heartbeat is recent, with the attempts they run (from leases,
    which hold at most the pool's capacity of rows)."""
    return conn.execute(
        sa.text(
            "SELECT w.name, w.role, w.host, w.pid, w.started_at, w.heartbeat_at, "
            "w.metrics_port, w.threads, w.busy_threads, coalesce(l.running, 0) AS running "
            "FROM worker_processes w LEFT JOIN ("
            "  SELECT worker, count(*) AS running FROM leases "
            "  WHERE worker IS NOT NULL GROUP BY worker) l ON l.worker = w.name "
            "WHERE w.heartbeat_at >= :since ORDER BY w.host, w.pid"
        ),
        {"since": now - stale_after},
    ).all()


@dataclass(frozen=True)
class LiveWorkers:
    processes: int
    threads: int  # the live processes' worker threads
    busy_threads: int  # of which ran a job's handler at their process's last heartbeat


def live_totals(conn: sa.Connection, now: datetime, stale_after: timedelta) -> LiveWorkers:
    row = conn.execute(
        sa.text(
            "SELECT count(*), coalesce(sum(threads), 0), coalesce(sum(busy_threads), 0) "
            "FROM worker_processes WHERE heartbeat_at >= :since"
        ),
        {"since": now - stale_after},
    ).one()
    return LiveWorkers(int(row[0]), int(row[1]), int(row[2]))


def record_maintenance_pass(conn: sa.Connection, now: datetime) -> None:
    """Called by the maintenance pass that holds the advisory lock (one writer at a time)."""
    conn.execute(
        sa.text("UPDATE maintenance_state SET last_pass_at = :now WHERE id = 1"), {"now": now}
    )


def last_maintenance_pass(conn: sa.Connection) -> datetime | None:
    value = conn.execute(
        sa.text("SELECT last_pass_at FROM maintenance_state WHERE id = 1")
    ).scalar_one_or_none()
    return value  # type: ignore[no-any-return]
