"""The configured pool capacity always takes effect, even when lowered while jobs run."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from queue_service.repository import pool as pool_repo
from queue_service.repository.leases import Lease


def _pool(conn: sa.Connection) -> tuple[int, int, int]:
    row = conn.execute(
        sa.text("SELECT cpu_capacity, cpu_capacity_configured, cpu_used FROM resource_pool")
    ).one()
    return row[0], row[1], row[2]


FINISHED_JOB = sa.text(
    "INSERT INTO jobs (id, type, priority, payload, cpu_units, memory_mb, max_attempts, "
    "  backoff_multiplier, initial_delay_seconds, max_delay_seconds, timeout_seconds, "
    "  request_hash, status, created_at, finished_at, attempts) "
    "VALUES (:id, 'noop', 'normal', '{}', 1, 1, 3, 2, 1, 300, 300, 'x', 'completed', "
    "  now(), now(), 1)"
)


def _admit(conn: sa.Connection, released: list[Lease]) -> None:
    pool_repo.admit(
        conn,
        now=datetime.now(UTC),
        window=200,
        starvation_seconds=120,
        wait=True,
        released=released,
    )


def test_a_lowered_capacity_waits_for_the_tokens_in_use_then_applies(
    clean_state: None, engine: sa.Engine
) -> None:
    with engine.connect() as conn, conn.begin():
        # Given 6 of 8 CPU units in use (jobs a and b among the holders)
        conn.execute(sa.text("UPDATE resource_pool SET cpu_capacity = 8, cpu_used = 6"))
        for job_id in ("a", "b"):
            conn.execute(FINISHED_JOB, {"id": job_id})

        # When the capacity is configured down to 4
        pool_repo.set_capacity(conn, 4, 4096)

        # Then it is recorded but cannot apply yet (the CHECK keeps used <= capacity)
        assert _pool(conn) == (8, 4, 6)

        # When running jobs give back 1 unit: still 5 in use, above 4
        _admit(conn, [Lease("a", 1, 1, 0)])
        assert _pool(conn) == (8, 4, 5)

        # When one more unit comes back, 4 in use: the new capacity applies
        _admit(conn, [Lease("b", 1, 1, 0)])
        assert _pool(conn) == (4, 4, 4)


def test_a_raised_capacity_applies_at_once(clean_state: None, engine: sa.Engine) -> None:
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.text("UPDATE resource_pool SET cpu_capacity = 8, cpu_used = 6"))
        pool_repo.set_capacity(conn, 16, 4096)
        assert _pool(conn) == (16, 16, 6)
