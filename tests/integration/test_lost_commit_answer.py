"""A flush whose commit answer is lost with its connection is run again by the writer
(db.HeldAutocommit). The claims in it committed the first time: the run again must give
them back to their threads (migration 0017), not leave the attempts claimed by a worker
that never runs them. Real PostgreSQL, the real writer; only the lost answer is made up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker

import actors.writer
from actors.writer import AttemptWriter
from queue_service.db import in_autocommit, in_transaction
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch
from queue_service.worker_batch import ClaimRequest, apply_flush, split_ends

WORKER = "test-worker"


def _lost_answer() -> sa.exc.OperationalError:
    """What SQLAlchemy raises when the connection drops before the result arrives."""
    return sa.exc.OperationalError(
        "SELECT taskq_worker_flush(...)", {}, ConnectionError("lost"), connection_invalidated=True
    )


@pytest.fixture
def writer(engine: sa.Engine, settings: Settings) -> Iterator[AttemptWriter]:
    attempt_writer = AttemptWriter(engine, settings, StubBroker(), WORKER)  # type: ignore[arg-type]
    yield attempt_writer
    attempt_writer.stop()


def _submit(engine: sa.Engine, settings: Settings, *job_ids: str) -> None:
    specs = [JobSpec(job_id=job_id) for job_id in job_ids]
    in_transaction(engine, lambda conn: submit_batch(conn, settings, specs, datetime.now(UTC)))


def test_a_claim_committed_before_its_answer_was_lost_runs(
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
    writer: AttemptWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an admitted job, and a flush whose commit answer is lost the first time it runs
    _submit(engine, settings, "LOST1")
    runs: list[int] = []

    def commit_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        result = apply_flush(*args, **kwargs)  # committed: the held connection autocommits
        runs.append(len(result.claimed))
        if len(runs) == 1:
            raise _lost_answer()
        return result

    monkeypatch.setattr(actors.writer, "apply_flush", commit_then_lose_the_answer)

    # When a worker thread claims the attempt
    claimed = writer.claim("LOST1", 1, redelivered=False)

    # Then the flush ran twice and the thread got its attempt (it ran once, was claimed once)
    assert len(runs) == 2
    assert claimed is not None and (claimed.job_id, claimed.attempt) == ("LOST1", 1)
    with engine.connect() as conn:
        lease = conn.execute(
            sa.text("SELECT worker, started_at IS NOT NULL FROM leases WHERE job_id = 'LOST1'")
        ).one()
    assert tuple(lease) == (WORKER, True)


def test_a_started_lease_is_still_not_claimed_twice(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given an attempt this worker claimed in one flush
    _submit(engine, settings, "TWICE1")
    first_flush = datetime.now(UTC)

    def claim(now: datetime) -> Any:
        return in_autocommit(
            engine,
            lambda conn: apply_flush(
                conn,
                settings,
                WORKER,
                [ClaimRequest("TWICE1", 1)],
                split_ends([]),
                now,
                lambda job_id, attempt: {},
            ),
        )

    assert list(claim(first_flush).claimed) == [("TWICE1", 1)]
    # When a later flush of the same worker (a second delivery) claims it again
    again = claim(datetime.now(UTC))
    # Then it gets nothing: only the same flush run again gets its own claim back
    assert again.claimed == {}
    assert list(claim(first_flush).claimed) == [("TWICE1", 1)]
