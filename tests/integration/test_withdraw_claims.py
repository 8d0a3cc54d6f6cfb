"""A stopping worker withdraws the claims of the prefetched messages it hands back
(`lifecycle.withdraw_unstarted`, running -> pending): another worker then claims the
redelivered message and no attempt is spent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from queue_service.db import in_autocommit, in_transaction
from queue_service.lifecycle import withdraw_unstarted
from queue_service.repository import jobs as jobs_repo
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch
from queue_service.worker_batch import ClaimRequest, FlushResult, apply_flush, split_ends


def _body(job_id: str, attempt: int) -> dict[str, Any]:
    return {"job_id": job_id, "attempt": attempt}


def _claim(
    engine: sa.Engine, settings: Settings, worker: str, *claims: ClaimRequest
) -> FlushResult:
    now = datetime.now(UTC)
    return in_autocommit(
        engine,
        lambda conn: apply_flush(conn, settings, worker, list(claims), split_ends([]), now, _body),
    )


def _state(engine: sa.Engine, job_id: str) -> tuple[Any, ...]:
    """The job as the product shows it (status, attempts, started), whether its row still
    has a rank (a claim leaves the row pending, migration 0016), and its lease."""
    with engine.connect() as conn:
        job = jobs_repo.get_job(conn, job_id)
        lease = conn.execute(
            sa.text("SELECT attempt, started_at IS NULL, worker FROM leases WHERE job_id = :id"),
            {"id": job_id},
        ).one()
    assert job is not None
    return (job.status, job.attempts, job.started_at is None, job.rank is not None, *lease)


def test_a_withdrawn_claim_is_claimed_again_by_another_worker(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given two admitted jobs whose first attempts worker A claimed on delivery
    now = datetime.now(UTC)
    specs = [JobSpec(job_id="W1"), JobSpec(job_id="W2")]
    in_transaction(engine, lambda conn: submit_batch(conn, settings, specs, now))
    assert (
        len(_claim(engine, settings, "A", ClaimRequest("W1", 1), ClaimRequest("W2", 1)).claimed)
        == 2
    )

    # When worker B asks to withdraw A's claim of W1 (not its own), nothing changes
    assert (
        in_transaction(
            engine, lambda conn: withdraw_unstarted(conn, settings, [("W1", 1)], "B", now)
        )
        == []
    )
    # and when A withdraws it (its handler never started)
    changes = in_transaction(
        engine, lambda conn: withdraw_unstarted(conn, settings, [("W1", 1)], "A", now)
    )

    # Then W1 is pending again with its attempt number and an unstarted lease of attempt 1
    assert [(c.job_id, c.attempt, c.previous_status, c.status) for c in changes] == [
        ("W1", 1, "running", "pending")
    ]
    assert _state(engine, "W1") == ("pending", 0, True, True, 1, True, None)
    assert _state(engine, "W2")[:2] == ("running", 1)
    # and its log records the withdrawal
    with engine.connect() as conn:
        last = conn.execute(
            sa.text(
                "SELECT previous_status, status, attempt FROM job_events "
                "WHERE job_id = 'W1' ORDER BY id DESC LIMIT 1"
            )
        ).one()
    assert tuple(last) == ("running", "pending", 1)
    # and the redelivered message's claim by worker B succeeds, on the same attempt
    claimed = _claim(engine, settings, "B", ClaimRequest("W1", 1, redelivered=True)).claimed
    assert list(claimed) == [("W1", 1)]
    assert _state(engine, "W1") == ("running", 1, False, True, 1, False, "B")
