"""Read-only aggregates for GET /stats and /metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
import sqlalchemy as sa

from queue_service.model import TERMINAL_STATUSES, JobStatus
from queue_service.repository.jobs import running_on_leases

# How long GET /stats may spend counting finished jobs exactly. Unfinished jobs are few
# and always counted; finished ones grow with history (a second at 10 million rows), so
# a status whose count does not fit in what is left of this budget gets the planner's
# estimate instead.
FINISHED_COUNT_BUDGET_MS = 250

_FINISHED = sorted(s.value for s in TERMINAL_STATUSES)
_UNFINISHED = sorted(s.value for s in JobStatus if s not in TERMINAL_STATUSES)
# Read through ix_jobs_status_created, one status range at a time.
_COUNT = "SELECT status, count(*) AS n FROM jobs WHERE status = ANY(:statuses) GROUP BY status"


@dataclass(frozen=True)
class StatusCounts:
    """Jobs by status (running: the jobs whose lease has started, see running_on_leases),
    and the statuses whose figure is an estimate rather than a count."""

    counts: dict[str, int]
    estimated: list[str] = field(default_factory=list)


def count_by_status(
    conn: sa.Connection, finished_budget_ms: int = FINISHED_COUNT_BUDGET_MS
) -> StatusCounts:
    """Exact counts of unfinished jobs; each finished status counted exactly while the
    budget lasts (the smallest first, by the planner's estimate), else estimated from the
    table's statistics (ANALYZE)."""
    counts = count_unfinished(conn)
    guesses = {status: estimated_count(conn, status) for status in _FINISHED}
    timeout = conn.execute(sa.text("SELECT current_setting('statement_timeout')")).scalar_one()
    deadline = time.monotonic() + finished_budget_ms / 1000
    estimated: list[str] = []
    for status in sorted(_FINISHED, key=guesses.__getitem__):
        left_ms = int((deadline - time.monotonic()) * 1000)
        exact = _count_within(conn, status, left_ms, timeout) if left_ms >= 1 else None
        if exact is None:
            estimated.append(status)
        counts[status] = guesses[status] if exact is None else exact
    return StatusCounts({s.value: counts.get(s.value, 0) for s in JobStatus}, sorted(estimated))


def count_unfinished(conn: sa.Connection) -> dict[str, int]:
    """Exact counts of the jobs not yet finished, by status (running: read from the
    leases); a status without jobs is absent. Bounded by live work, not by history."""
    return running_on_leases(conn, _counts(conn, _UNFINISHED))


def estimated_count(conn: sa.Connection, status: str) -> int:
    """The planner's row estimate for one status: from the table's size and the status
    column's statistics, kept by autovacuum's ANALYZE; no row is read. Never below 1."""
    assert status in _FINISHED or status in _UNFINISHED  # a literal below, never user input
    plan = conn.execute(
        sa.text(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM jobs WHERE status = '{status}'")
    ).scalar_one()
    return int(plan[0]["Plan"]["Plan Rows"])


def _count_within(conn: sa.Connection, status: str, budget_ms: int, timeout: str) -> int | None:
    """The exact count of one status, or None when it takes longer than `budget_ms`
    (`timeout`: the connection's own statement_timeout, put back after the count)."""
    try:
        # A savepoint: the cancelled count leaves the connection's transaction usable, and
        # its rollback takes the local timeout back with it (on success it is put back).
        with conn.begin_nested():
            _set_local_timeout(conn, str(budget_ms))
            exact = _counts(conn, [status]).get(status, 0)
            _set_local_timeout(conn, timeout)
    except sa.exc.OperationalError as error:
        if not isinstance(error.orig, psycopg.errors.QueryCanceled):
            raise
        return None
    return exact


def _set_local_timeout(conn: sa.Connection, value: str) -> None:
    conn.execute(sa.text("SELECT set_config('statement_timeout', :v, true)"), {"v": value})


def _counts(conn: sa.Connection, statuses: list[str]) -> dict[str, int]:
    rows = conn.execute(sa.text(_COUNT), {"statuses": statuses}).all()
    return {r.status: int(r.n) for r in rows}


@dataclass(frozen=True)
class Timings:
    finished: int
    wait_p50: float | None
    wait_p95: float | None
    wait_p99: float | None
    run_p50: float | None
    run_p95: float | None
    run_p99: float | None


def recent_timings(conn: sa.Connection, now: datetime, window: timedelta) -> Timings:
    """Wait (created -> started) and run (started -> finished) percentiles, in seconds, of
    the jobs completed within `window` (ix_jobs_finished)."""
    row = conn.execute(
        sa.text(
            "SELECT count(*) AS n, "
            "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
            "  (ORDER BY extract(epoch FROM started_at - created_at)) AS wait, "
            "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
            "  (ORDER BY extract(epoch FROM finished_at - started_at)) AS run "
            "FROM jobs WHERE finished_at > :since AND status = 'completed'"
        ),
        {"since": now - window},
    ).one()
    wait = row.wait or [None, None, None]
    run = row.run or [None, None, None]
    return Timings(row.n, *wait, *run)


def completed_since(conn: sa.Connection, since: datetime) -> int:
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM jobs WHERE finished_at > :since AND status = 'completed'"
            ),
            {"since": since},
        ).scalar_one()
    )
