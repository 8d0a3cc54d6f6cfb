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


def set_capacity(conn: sa.Connection, cpu_units: int, memory_mb: int) -> None:
    """Record the configured capacity and apply it now if the tokens in use allow; if
    running jobs hold more than a lowered capacity, admission applies it once they have
    given enough back (and starts nothing new meanwhile)."""
    conn.execute(
        sa.text(
            "UPDATE resource_pool SET cpu_capacity_configured = :cpu, "
            "memory_capacity_configured = :mem, "
            "cpu_capacity = CASE WHEN cpu_used <= :cpu THEN :cpu ELSE cpu_capacity END, "
            "memory_capacity = CASE WHEN memory_used <= :mem THEN :mem ELSE memory_capacity END "
            "WHERE id = 1"
        ),
        {"cpu": cpu_units, "mem": memory_mb},
    )
