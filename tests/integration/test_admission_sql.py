"""Choosing the next jobs is index-driven: the admission candidate query walks
ix_jobs_admission in (rank, seq) order and stops at its LIMIT, so its cost does not grow
with the number of waiting jobs nor with the size of the table.

The query is captured from `jobs_repo.ready_candidates` as it runs, so the plan
checked is the plan of the SQL admission really sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from queue_service.repository import jobs as jobs_repo

PENDING_ROWS = 50_000
COMPLETED_ROWS = 20_000
ADMISSION_WINDOW = 200

# Ready jobs of mixed priorities and a history of finished ones; rank as admission sets it.
FILL = """
INSERT INTO jobs (id, type, priority, payload, cpu_units, memory_mb, max_attempts,
    backoff_multiplier, initial_delay_seconds, max_delay_seconds, timeout_seconds,
    request_hash, status, created_at, pending_since, rank, queued_at, started_at, finished_at,
    attempts)
SELECT 'bulk_' || n, 'noop', (ARRAY['low', 'normal', 'high', 'critical'])[1 + n % 4], '{}',
    1 + n % 8, 128, 3, 2, 1, 300, 300, 'x',
    CASE WHEN n <= :completed THEN 'completed' ELSE 'pending' END,
    now() - interval '1 day' + n * interval '1 ms',
    CASE WHEN n > :completed THEN now() - interval '1 day' + n * interval '1 ms' END,
    CASE WHEN n > :completed
        THEN extract(epoch FROM now() - interval '1 day' + n * interval '1 ms') - (n % 4) * 60
    END,
    CASE WHEN n <= :completed THEN now() END,
    CASE WHEN n <= :completed THEN now() END,
    CASE WHEN n <= :completed THEN now() END,
    CASE WHEN n <= :completed THEN 1 ELSE 0 END
FROM generate_series(1, :total) AS n
"""


@pytest.fixture(scope="module")
def filled(migrated: None, engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection whose open transaction sees only the bulk rows; rolled back afterwards."""
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(sa.text("TRUNCATE jobs, job_dependencies, job_events, leases, dead_letters"))
        conn.execute(
            sa.text(FILL),
            {"completed": COMPLETED_ROWS, "total": COMPLETED_ROWS + PENDING_ROWS},
        )
        conn.execute(sa.text("ANALYZE jobs"))
        try:
            yield conn
        finally:
            transaction.rollback()


def captured_sql(conn: sa.Connection, call: Any) -> tuple[str, Any]:
    """The one statement `call(conn)` sends to PostgreSQL, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(conn, "before_cursor_execute", capture)
    try:
        call(conn)
    finally:
        sa.event.remove(conn, "before_cursor_execute", capture)
    assert len(sent) == 1, sent
    return sent[0]


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def explain_analyze(conn: sa.Connection, statement: str, parameters: Any) -> dict[str, Any]:
    """The executed plan (the rows it locks stay in the fixture's rolled-back transaction)."""
    result = conn.exec_driver_sql(
        f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
    ).scalar_one()
    return dict(result[0]["Plan"])


def test_admission_candidates_come_from_an_index_scan_without_sort(
    filled: sa.Connection,
) -> None:
    # Given 50,000 ready jobs and 20,000 finished ones
    conn = filled
    assert (
        conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'pending'")).scalar_one()
        == PENDING_ROWS
    )

    # When admission reads its candidates
    statement, parameters = captured_sql(
        conn, lambda c: jobs_repo.ready_candidates(c, ADMISSION_WINDOW)
    )
    plan = explain_analyze(conn, statement, parameters)

    # Then the plan walks ix_jobs_admission in order, skips admitted jobs by the leases
    # primary key (an anti-join), and stops at the limit: no sort, no sequential scan,
    # nothing proportional to the 50,000 ready jobs
    nodes = list(plan_nodes(plan))
    kinds = [node["Node Type"] for node in nodes]
    assert kinds == ["Limit", "Nested Loop", "Index Scan", "Index Only Scan"], kinds
    assert nodes[1]["Join Type"] == "Anti"
    assert nodes[2]["Index Name"] == "ix_jobs_admission"
    assert nodes[3]["Index Name"] == "leases_pkey"
    assert "Sort" not in kinds and "Seq Scan" not in kinds
    assert nodes[2]["Actual Rows"] == ADMISSION_WINDOW  # read no further than the window


def test_admission_candidates_are_the_best_ranked_in_order(filled: sa.Connection) -> None:
    # Given the same 50,000 ready jobs
    conn = filled

    # When admission reads its candidates
    candidates = jobs_repo.ready_candidates(conn, ADMISSION_WINDOW)

    # Then they are the window's worth of best-ranked ready jobs, in (rank, seq) order
    expected = (
        conn.execute(
            sa.text(
                "SELECT id FROM jobs j WHERE status = 'pending' "
                "AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.job_id = j.id) "
                "ORDER BY rank, seq LIMIT :limit"
            ),
            {"limit": ADMISSION_WINDOW},
        )
        .scalars()
        .all()
    )
    assert [candidate.job_id for candidate, _ in candidates] == expected
    assert len(expected) == ADMISSION_WINDOW


def ready_job_at(conn: sa.Connection, position: int) -> tuple[str, float, int]:
    """(id, rank, seq) of the ready job at `position` (1-based) in admission order."""
    row = conn.execute(
        sa.text(
            "SELECT id, rank, seq FROM jobs WHERE status = 'pending' "
            "ORDER BY rank, seq OFFSET :skip LIMIT 1"
        ),
        {"skip": position - 1},
    ).one()
    return row.id, row.rank, row.seq


@pytest.mark.parametrize("position", [1, 150, ADMISSION_WINDOW, 40_000])
def test_jobs_ahead_of_a_waiting_job_are_an_index_walk_of_the_window(
    filled: sa.Connection, position: int
) -> None:
    # Given a ready job at `position` among 50,000 (explaining its wait replays admission
    # over the jobs ranked up to it)
    conn = filled
    job_id, rank, seq = ready_job_at(conn, position)

    # When the jobs ahead of it are read
    statement, parameters = captured_sql(
        conn, lambda c: jobs_repo.candidates_ahead(c, job_id, rank, seq, ADMISSION_WINDOW)
    )
    plan = explain_analyze(conn, statement, parameters)

    # Then, wherever the job stands, the read walks ix_jobs_admission from its start and
    # stops at the window: no hash of the ready jobs, no sort of more than the window
    nodes = list(plan_nodes(plan))
    kinds = [node["Node Type"] for node in nodes]
    assert "Seq Scan" not in kinds and "Hash" not in kinds, kinds
    walks = [node for node in nodes if node.get("Index Name") == "ix_jobs_admission"]
    assert len(walks) == 1 and walks[0]["Actual Rows"] <= ADMISSION_WINDOW
    sorts = [node for node in nodes if node["Node Type"] == "Sort"]
    assert all(node["Actual Rows"] <= ADMISSION_WINDOW for node in sorts), sorts

    # And the answer is the window's jobs ranked up to it, in order, itself last, when it
    # is within the window; nothing when it is further back
    ahead = [
        c.job_id for c in jobs_repo.candidates_ahead(conn, job_id, rank, seq, ADMISSION_WINDOW)
    ]
    window = [c.job_id for c, _ in jobs_repo.ready_candidates(conn, ADMISSION_WINDOW)]
    if position <= ADMISSION_WINDOW:
        assert ahead == window[:position] and ahead[-1] == job_id
    else:
        assert ahead == []
