"""resource_pool: the global token pool shared by every worker process on every machine."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.admission import PoolState
from queue_service.repository.leases import Lease

_POOL_COLUMNS = "cpu_capacity, memory_capacity, cpu_used, memory_used, paused"


def _pool_state(row: sa.Row[Any]) -> PoolState:
    return PoolState(
        cpu_capacity=row.cpu_capacity,
        memory_capacity=row.memory_capacity,
        cpu_used=row.cpu_used,
        memory_used=row.memory_used,
        paused=row.paused,
    )


def lock_pool(conn: sa.Connection, *, wait: bool = True) -> PoolState | None:
    """Lock the pool row for the rest of the transaction and return its state.

    With wait=False, return None at once when another transaction holds the lock.
    """
    row = conn.execute(
        sa.text(
            f"SELECT {_POOL_COLUMNS} FROM resource_pool WHERE id = 1 FOR UPDATE"
            + ("" if wait else " SKIP LOCKED")
        )
    ).first()
    return None if row is None else _pool_state(row)


def read_pool(conn: sa.Connection) -> PoolState:
    return _pool_state(
        conn.execute(sa.text(f"SELECT {_POOL_COLUMNS} FROM resource_pool WHERE id = 1")).one()
    )


def admit(
    conn: sa.Connection,
    *,
    now: datetime,
    window: int,
    starvation_seconds: float,
    wait: bool,
    released: Sequence[Lease] = (),
) -> list[tuple[str, int, str]]:
    """Return `released` tokens, then admit the next jobs: one call of `taskq_admit`
    (migration 0002), the SQL twin of `admission.decide_admission`. The pool row is locked
    from this statement to the commit, never across a round trip to Python.

    Returns (job_id, attempt, priority) of each admitted attempt, best ranked first.
    wait=False skips admission (but never a token return) when another transaction holds
    the pool.
    """
    rows = conn.execute(
        sa.text(
            "SELECT admitted_job_id, admitted_attempt, admitted_priority FROM taskq_admit("
            "CAST(:now AS timestamptz), :window, :starvation, :wait, "
            "CAST(:jobs AS text[]), CAST(:attempts AS int[]), CAST(:cpu AS int[]), "
            "CAST(:memory AS int[]))"
        ),
        {
            "now": now,
            "window": window,
            "starvation": starvation_seconds,
            "wait": wait,
            "jobs": [lease.job_id for lease in released],
            "attempts": [lease.attempt for lease in released],
            "cpu": [lease.cpu_units for lease in released],
            "memory": [lease.memory_mb for lease in released],
        },
    ).all()
    return [(r.admitted_job_id, r.admitted_attempt, r.admitted_priority) for r in rows]


def set_paused(conn: sa.Connection, paused: bool) -> None:
    conn.execute(sa.text("UPDATE resource_pool SET paused = :p WHERE id = 1"), {"p": paused})


def set_capacity(conn: sa.Connection, cpu_units: int, memory_mb: int) -> bool:
    """Apply the configured capacity unless running jobs already use more than it."""
    result = conn.execute(
        sa.text(
            "UPDATE resource_pool SET cpu_capacity = :cpu, memory_capacity = :mem "
            "WHERE id = 1 AND cpu_used <= :cpu AND memory_used <= :mem "
            "AND (cpu_capacity, memory_capacity) IS DISTINCT FROM (:cpu, :mem)"
        ),
        {"cpu": cpu_units, "mem": memory_mb},
    )
    return result.rowcount == 1
