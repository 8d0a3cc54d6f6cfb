"""PostgreSQL refuses a status change outside the allowed transitions (migration 0008).

The tests that submit a job stop the shared product first: its maintenance ticker would
admit (and its workers run) the pending job the test moves by hand."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from queue_service.db import in_transaction
from queue_service.model import JobStatus, can_transition
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job


def test_the_triggers_set_is_the_models_set(migrated: None, engine: sa.Engine) -> None:
    # Given every ordered pair of distinct statuses
    pairs = list(itertools.permutations(JobStatus, 2))

    # When PostgreSQL's check is asked about each
    with engine.connect() as conn:
        allowed = {
            (source, target): conn.execute(
                sa.text("SELECT taskq_transition_allowed(:source, :target)"),
                {"source": source.value, "target": target.value},
            ).scalar_one()
            for source, target in pairs
        }

    # Then it allows exactly what model.ALLOWED_TRANSITIONS allows
    assert allowed == {pair: can_transition(*pair) for pair in pairs}


def test_an_illegal_update_is_refused(
    shared_product_stopped: None, clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given a pending job
    now = datetime.now(UTC)
    in_transaction(
        engine, lambda conn: submit_job(conn, settings, JobSpec(job_id="trg_1"), now, admit=False)
    )

    # When an UPDATE moves it straight to completed (pending -> completed is not allowed)
    with pytest.raises(sa.exc.IntegrityError) as refused, engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE jobs SET status = 'completed', finished_at = now(), rank = NULL, "
                "pending_since = NULL WHERE id = 'trg_1'"
            )
        )

    # Then the trigger refuses it, naming the move, and the job is still pending
    assert "cannot move from pending to completed" in str(refused.value.orig)
    assert refused.value.orig.diag.constraint_name == "jobs_status_transition"  # type: ignore[union-attr]
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM jobs WHERE id = 'trg_1'")).scalar_one()
    assert status == "pending"


def test_updates_that_keep_the_status_do_not_reach_the_check(
    shared_product_stopped: None, clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given a pending job
    now = datetime.now(UTC)
    in_transaction(
        engine, lambda conn: submit_job(conn, settings, JobSpec(job_id="trg_2"), now, admit=False)
    )

    # When an UPDATE writes its status without changing it
    with engine.begin() as conn:
        count = conn.execute(
            sa.text("UPDATE jobs SET status = status, last_error = 'x' WHERE id = 'trg_2'")
        ).rowcount

    # Then it goes through
    assert count == 1


@pytest.mark.parametrize("started", [False, True], ids=["lease-unstarted", "lease-started"])
def test_pending_to_completed_needs_the_attempts_started_lease(
    shared_product_stopped: None,
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
    started: bool,
) -> None:
    # Given a pending job holding the lease of its first attempt, started or not (a claim
    # starts the lease and leaves the row pending, migration 0016)
    now = datetime.now(UTC)
    in_transaction(
        engine, lambda conn: submit_job(conn, settings, JobSpec(job_id="trg_3"), now, admit=False)
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO leases (job_id, attempt, cpu_units, memory_mb, granted_at, "
                "  published_at, started_at, expires_at, worker) "
                "VALUES ('trg_3', 1, 1, 1, now(), now(), :started, :expires, 'w')"
            ),
            {"started": now if started else None, "expires": now if started else None},
        )

    # When the row records that attempt's success in one change
    def complete() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE jobs SET status = 'completed', attempts = 1, finished_at = now(), "
                    "rank = NULL, pending_since = NULL WHERE id = 'trg_3'"
                )
            )

    # Then the trigger allows it only when the attempt's lease has started (its claim)
    if started:
        complete()
    else:
        with pytest.raises(sa.exc.IntegrityError, match="cannot move from pending to completed"):
            complete()
    with engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM jobs WHERE id = 'trg_3'")).scalar_one()
    assert status == ("completed" if started else "pending")
