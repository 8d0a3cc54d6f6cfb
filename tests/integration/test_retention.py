"""Retention: old finished jobs go; recent ones, those with open dead letters and those a
replay of a dead letter could still revive stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from queue_service.maintenance import purge_finished_jobs
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job
from tests.support.job_rows import complete_by_hand, dead_letter_by_hand


def test_purge_deletes_only_old_finished_jobs_without_open_dead_letters(
    clean_state: None, settings: Settings, engine: sa.Engine
) -> None:
    # Given jobs finished 40 days ago (one with an open dead letter), one finished an hour
    # ago, and one still waiting
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for job_id in ("old_done", "old_dead", "recent_done", "waiting"):
            submit_job(conn, settings, JobSpec(job_id=job_id), now)
        # and a dependent cancelled long ago by old_dead's failure: a replay would revive it
        submit_job(conn, settings, JobSpec(job_id="old_revivable", depends_on=("old_dead",)), now)
        conn.execute(
            sa.text(
                "UPDATE jobs SET status = 'cancelled', finished_at = :at, "
                "cancel_reason = 'upstream_failed:old_dead' WHERE id = 'old_revivable'"
            ),
            {"at": now - timedelta(days=40)},
        )
        finished = {"old_done": now - timedelta(days=40), "old_dead": now - timedelta(days=40)}
        finished["recent_done"] = now - timedelta(hours=1)
        for job_id, at in finished.items():
            complete_by_hand(conn, job_id, at)
        conn.execute(sa.text("DELETE FROM leases"))
        dead_letter_by_hand(conn, "old_dead", now)

    # When the retention purge runs with 30 days
    deleted = purge_finished_jobs(engine, settings.model_copy(update={"retention_days": 30}), now)

    # Then only the old job without an open dead letter is gone, with its events
    assert deleted == 1
    with engine.connect() as conn:
        left = set(conn.execute(sa.text("SELECT id FROM jobs")).scalars())
        events = conn.execute(
            sa.text("SELECT count(*) FROM job_events WHERE job_id = 'old_done'")
        ).scalar_one()
    assert left == {"old_dead", "old_revivable", "recent_done", "waiting"}
    assert events == 0
