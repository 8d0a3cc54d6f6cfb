"""Read-only aggregates for GET /stats and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa


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
