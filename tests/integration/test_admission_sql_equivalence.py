"""The SQL admission (`taskq_admit`) gives the same answers as the pure reference.

`admission.decide_admission` is the readable reference of the rules; the worker path runs
its SQL twin inside PostgreSQL so the pool row is locked for one statement only. For any
generated ready jobs and pool state, both must start the same jobs in the same order and
leave the pool in the same state, and the SQL one must grant exactly those leases.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queue_service.admission import Candidate, PoolState, decide_admission
from queue_service.repository import pool as pool_repo
from tests.support.admission_cases import NOW, POLICY, candidate_lists, pools

INSERT_READY_JOB = sa.text(
    "INSERT INTO jobs (id, type, priority, payload, cpu_units, memory_mb, max_attempts, "
    "  backoff_multiplier, initial_delay_seconds, max_delay_seconds, timeout_seconds, "
    "  request_hash, status, created_at, pending_since, rank, attempts) "
    "VALUES (:id, 'noop', :priority, '{}', :cpu, :memory, 3, 2, 1, 300, 300, 'x', "
    "  'pending', :since, :since, :rank, :attempts)"
)


def _admit_in_sql(
    conn: sa.Connection, candidates: list[Candidate], pool: PoolState, attempts: list[int]
) -> tuple[list[tuple[str, int]], tuple[int, int], list[str]]:
    conn.execute(sa.text("DELETE FROM leases"))
    conn.execute(sa.text("DELETE FROM jobs"))
    conn.execute(
        sa.text(
            "UPDATE resource_pool SET cpu_capacity = :cc, memory_capacity = :mc, "
            "cpu_capacity_configured = :cc, memory_capacity_configured = :mc, "
            "cpu_used = :cu, memory_used = :mu, paused = :paused"
        ),
        {
            "cc": pool.cpu_capacity,
            "mc": pool.memory_capacity,
            "cu": pool.cpu_used,
            "mu": pool.memory_used,
            "paused": pool.paused,
        },
    )
    for index, (candidate, attempt) in enumerate(zip(candidates, attempts, strict=True)):
        conn.execute(
            INSERT_READY_JOB,
            {
                "id": candidate.job_id,
                "priority": candidate.priority.value,
                "cpu": candidate.cpu_units,
                "memory": candidate.memory_mb,
                "since": candidate.pending_since,
                # Rank order = list order, whatever the priorities: the test's input is
                # already ranked, so ties and order are the reference's.
                "rank": float(index),
                "attempts": attempt,
            },
        )
    admitted = pool_repo.admit(
        conn, now=NOW, window=200, starvation_seconds=POLICY.starvation_seconds, wait=True
    )
    used = conn.execute(sa.text("SELECT cpu_used, memory_used FROM resource_pool")).one()
    leases = conn.execute(sa.text("SELECT job_id FROM leases ORDER BY job_id")).scalars().all()
    return [(job_id, attempt) for job_id, attempt, _ in admitted], (used[0], used[1]), list(leases)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(candidate_lists(), pools(), st.data())
def test_sql_admission_matches_the_reference(
    migrated: None,
    engine: sa.Engine,
    candidates: list[Candidate],
    pool: PoolState,
    data: Any,
) -> None:
    attempts = [data.draw(st.integers(0, 2)) for _ in candidates]
    reference = decide_admission(candidates, pool, NOW, POLICY)

    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            admitted, used, leases = _admit_in_sql(conn, candidates, pool, attempts)
        finally:
            transaction.rollback()

    attempt_of = {c.job_id: a + 1 for c, a in zip(candidates, attempts, strict=True)}
    assert admitted == [(c.job_id, attempt_of[c.job_id]) for c in reference.started]
    assert used == (reference.cpu_used, reference.memory_used)
    assert leases == sorted(c.job_id for c in reference.started)
