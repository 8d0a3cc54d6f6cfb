"""A dead-letter replay brings back exactly the dependents whose dead ancestors are all
back in play (issue: a dependent of two failed parents stayed blocked forever)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from queue_service import transitions
from queue_service.db import in_transaction
from queue_service.lifecycle import AttemptEnd, finish_attempts, replay_dead_letter
from queue_service.repository import jobs as jobs_repo
from queue_service.retry_policy import AttemptResult
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(engine: sa.Engine, settings: Settings, job_id: str) -> int:
    """Claim attempt 1 of an admitted job and fail it for good; returns its dead letter."""

    def work(conn: sa.Connection) -> None:
        assert transitions.claim_attempts(conn, [(job_id, 1)], "test-worker", 60, _now())
        ends = [AttemptEnd(job_id, 1, AttemptResult.PERMANENT_ERROR, "boom")]
        finish_attempts(conn, settings, ends, _now(), lambda j, a: {"job_id": j})

    in_transaction(engine, work)
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT id FROM dead_letters WHERE job_id = :id"), {"id": job_id}
            ).scalar_one()
        )


def _state(engine: sa.Engine, job_id: str) -> tuple[str, Any, int]:
    with engine.connect() as conn:
        job = jobs_repo.get_job(conn, job_id)
    assert job is not None
    return job.status, job.cancel_reason, job.remaining_deps


def test_a_dependent_of_two_failed_parents_comes_back_with_the_last_replay(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given A and B, D depending on both, E on D; A and B fail for good
    specs = [
        JobSpec(job_id="A"),
        JobSpec(job_id="B"),
        JobSpec(job_id="D", depends_on=("A", "B")),
        JobSpec(job_id="E", depends_on=("D",)),
    ]
    in_transaction(engine, lambda conn: submit_batch(conn, settings, specs, _now()))
    letter_a = _fail(engine, settings, "A")
    letter_b = _fail(engine, settings, "B")
    assert _state(engine, "D") == ("cancelled", "upstream_failed:A", 2)
    assert _state(engine, "E")[0] == "cancelled"

    # When A is replayed, Then D and E stay cancelled: B is still dead
    in_transaction(engine, lambda conn: replay_dead_letter(conn, settings, letter_a, _now()))
    assert _state(engine, "D")[0] == "cancelled"
    assert _state(engine, "E")[0] == "cancelled"

    # When B is replayed too, Then D waits for both again and E for D
    in_transaction(engine, lambda conn: replay_dead_letter(conn, settings, letter_b, _now()))
    assert _state(engine, "D") == ("blocked", None, 2)
    assert _state(engine, "E") == ("blocked", None, 1)
