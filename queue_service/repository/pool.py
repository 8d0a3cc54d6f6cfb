"""resource_pool: the global token pool shared by every worker process on every machine."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from queue_service.admission import PoolState

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


def take_tokens(conn: sa.Connection, cpu_units: int, memory_mb: int) -> None:
    """Add to the used counters; the CHECK constraint refuses going past capacity."""
    conn.execute(
        sa.text(
            "UPDATE resource_pool SET cpu_used = cpu_used + :cpu, "
            "memory_used = memory_used + :mem WHERE id = 1"
        ),
        {"cpu": cpu_units, "mem": memory_mb},
    )


def return_tokens(conn: sa.Connection, cpu_units: int, memory_mb: int) -> PoolState:
    """Give tokens back; locks the pool row and returns its new state in one round trip."""
    row = conn.execute(
        sa.text(
            "UPDATE resource_pool SET cpu_used = cpu_used - :cpu, "
            f"memory_used = memory_used - :mem WHERE id = 1 RETURNING {_POOL_COLUMNS}"
        ),
        {"cpu": cpu_units, "mem": memory_mb},
    ).one()
    return _pool_state(row)


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
