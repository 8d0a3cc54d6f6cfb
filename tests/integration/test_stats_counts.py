"""GET /stats's counts by status: unfinished jobs always counted, finished jobs counted
within a time budget and estimated past it, so the answer stays fast at millions of rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from queue_service.repository import stats as stats_repo
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job
from tests.support.job_rows import complete_by_hand


def _two_completed_one_waiting(engine: sa.Engine, settings: Settings) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for job_id in ("done_1", "done_2", "waiting"):
            submit_job(conn, settings, JobSpec(job_id=job_id), now)
        conn.execute(sa.text("DELETE FROM leases"))  # nothing runs: the rows are moved here
        for job_id in ("done_1", "done_2"):
            complete_by_hand(conn, job_id, now)
        conn.execute(sa.text("ANALYZE jobs"))


def _slow_count(monkeypatch: pytest.MonkeyPatch, condition: str) -> None:
    """GET /stats's count statement made slow: `condition`, which sleeps, joins its WHERE."""
    slow = stats_repo._COUNT.replace("GROUP BY", f"AND {condition} GROUP BY")
    monkeypatch.setattr(stats_repo, "_COUNT", slow)


def test_counts_are_exact_within_the_budget_and_the_timeout_is_put_back(
    clean_state: None, settings: Settings, engine: sa.Engine
) -> None:
    # Given two completed jobs and one waiting
    _two_completed_one_waiting(engine, settings)

    with engine.connect() as conn:
        before = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()
        # When they are counted with the default budget
        counted = stats_repo.count_by_status(conn)
        after = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()

    # Then every status is there, exact, and the connection's timeout is what it was
    assert counted.estimated == []
    assert counted.counts["completed"] == 2
    assert counted.counts["pending"] == 1
    assert sum(counted.counts.values()) == 3
    assert after == before


def test_finished_counts_past_the_budget_are_estimates(
    clean_state: None, settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two completed jobs and one waiting, and a count that takes 300 ms per status
    _two_completed_one_waiting(engine, settings)
    # (an init plan: the sleep runs once per count, whatever the rows)
    _slow_count(monkeypatch, "(SELECT pg_sleep(0.3)) IS NOT NULL")

    with engine.connect() as conn:
        before = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()
        # When they are counted with a 50 ms budget for finished jobs (the unfinished count
        # has none: it takes its 300 ms)
        counted = stats_repo.count_by_status(conn, finished_budget_ms=50)
        after = conn.execute(sa.text("SHOW statement_timeout")).scalar_one()

    # Then the unfinished count is exact, the finished ones are the planner's estimates
    # (from ANALYZE: two of three rows completed), named as such, and the connection is
    # still usable with its own timeout
    assert counted.estimated == ["cancelled", "completed", "failed"]
    assert counted.counts["pending"] == 1
    assert counted.counts["completed"] == 2
    assert after == before


def test_a_status_that_counts_quickly_stays_exact_beside_an_estimated_one(
    clean_state: None, settings: Settings, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two completed jobs whose count is slow (300 ms per completed row) while the
    # other finished statuses count at once
    _two_completed_one_waiting(engine, settings)
    _slow_count(monkeypatch, "(status <> 'completed' OR pg_sleep(0.3) IS NOT NULL)")

    with engine.connect() as conn:
        # When they are counted with a 100 ms budget for finished jobs
        counted = stats_repo.count_by_status(conn, finished_budget_ms=100)

    # Then only the completed figure is an estimate; failed and cancelled are counted
    assert counted.estimated == ["completed"]
    assert counted.counts["completed"] == 2
    assert counted.counts["failed"] == 0
    assert counted.counts["cancelled"] == 0
