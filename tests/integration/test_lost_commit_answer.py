"""A flush whose commit answer is lost with its connection is run again by the writer
(db.HeldAutocommit). The claims in it committed the first time: the run again must give
them back to their threads (migration 0017), not leave the attempts claimed by a worker
that never runs them. A final failure in it must come back as failed, so that its message
is dead-lettered through the exchange, not acknowledged. When every try loses its
connection (PostgreSQL going away), the threads skip their messages and the writer's next
heartbeat withdraws those claims. Real PostgreSQL, the real writer; only the lost answers
are made up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker

import actors.writer
from actors.writer import AttemptWriter
from queue_service import names
from queue_service.db import in_autocommit, in_transaction
from queue_service.lifecycle import AttemptEnd, withdraw_unstarted
from queue_service.model import JobStatus, RetryConfig
from queue_service.repository import pool as pool_repo
from queue_service.retry_policy import AttemptResult, DeadLetterReason
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch
from queue_service.worker_batch import ClaimRequest, FlushResult, apply_flush, split_ends
from tests.support.product import wait_until

WORKER = "test-worker"


def _no_body(job_id: str, attempt: int) -> dict[str, Any]:
    """The dead-letter message body (no attempt fails here)."""
    return {}


def _lost_answer() -> sa.exc.OperationalError:
    """What SQLAlchemy raises when the connection drops before the result arrives."""
    return sa.exc.OperationalError(
        "SELECT taskq_worker_flush(...)", {}, ConnectionError("lost"), connection_invalidated=True
    )


def first_answer_lost(
    monkeypatch: pytest.MonkeyPatch, seen: Callable[[FlushResult], Any]
) -> list[Any]:
    """Make the writer's flushes commit and then lose their answer the first time: the
    writer runs the flush again. Returns what `seen` makes of each run's result."""
    runs: list[Any] = []

    def commit_then_lose_the_answer(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        result = apply_flush(conn, *args, **kwargs)
        runs.append(seen(result))
        if len(runs) == 1:
            conn.commit()  # a transaction's flush commits here; one in autocommit already did
            raise _lost_answer()
        return result

    monkeypatch.setattr(actors.writer, "apply_flush", commit_then_lose_the_answer)
    return runs


@pytest.fixture
def writer(engine: sa.Engine, settings: Settings) -> Iterator[AttemptWriter]:
    quick = settings.model_copy(update={"heartbeat_seconds": 0.2})
    attempt_writer = AttemptWriter(engine, quick, StubBroker(), WORKER)  # type: ignore[arg-type]
    yield attempt_writer
    attempt_writer.stop()


def _lease(engine: sa.Engine, job_id: str) -> tuple[Any, ...]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT worker, started_at FROM leases WHERE job_id = :id"), {"id": job_id}
        ).one()
    return tuple(row)


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
    runs = first_answer_lost(monkeypatch, lambda result: len(result.claimed))

    # When a worker thread claims the attempt
    claimed = writer.claim("LOST1", 1, redelivered=False)

    # Then the flush ran twice and the thread got its attempt (it ran once, was claimed once)
    assert len(runs) == 2
    assert claimed is not None and (claimed.job_id, claimed.attempt) == ("LOST1", 1)
    worker, started_at = _lease(engine, "LOST1")
    assert worker == WORKER and started_at is not None


def test_a_final_failure_committed_before_its_answer_was_lost_is_dead_lettered(
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
    writer: AttemptWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a running attempt of a job allowed one attempt
    spec = JobSpec(job_id="LOSTF1", retry=RetryConfig(max_attempts=1))
    in_transaction(engine, lambda conn: submit_batch(conn, settings, [spec], datetime.now(UTC)))
    assert writer.claim("LOSTF1", 1, redelivered=False) is not None
    # and a flush whose commit answer is lost the first time it runs (the end that fails
    # the job runs in a transaction: committed here before the answer goes)
    runs = first_answer_lost(monkeypatch, lambda result: len(result.outcomes))

    # When the attempt fails
    outcome = writer.finish(AttemptEnd("LOSTF1", 1, AttemptResult.RETRYABLE_ERROR, "boom"))

    # Then the flush ran twice, and the thread learns that the job failed (its message is
    # dead-lettered), for the reason the first run recorded, once
    assert runs == [1, 1]
    assert outcome is not None and outcome.status is JobStatus.FAILED
    assert outcome.dead_letter_reason is DeadLetterReason.RETRIES_EXHAUSTED
    with engine.connect() as conn:
        dead = conn.execute(
            sa.text("SELECT attempts, reason FROM dead_letters WHERE job_id = 'LOSTF1'")
        ).all()
        status = conn.execute(sa.text("SELECT status FROM jobs WHERE id = 'LOSTF1'")).scalar()
    assert [tuple(row) for row in dead] == [(1, "retries_exhausted")]
    assert status == "failed"


def test_what_a_flush_admitted_before_its_answer_was_lost_is_published(
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool of one CPU unit: the first job admitted, the second waiting for tokens
    with engine.begin() as conn:
        pool_repo.set_capacity(conn, 1, settings.pool_memory_mb)
    _submit(engine, settings, "ADM1")
    _submit(engine, settings, "ADM2")
    broker = StubBroker()
    broker.declare_queue(names.JOBS_QUEUE)
    writer = AttemptWriter(engine, settings, broker, WORKER)  # type: ignore[arg-type]
    try:
        assert writer.claim("ADM1", 1, redelivered=False) is not None
        # and a flush whose commit answer is lost the first time it runs
        runs = first_answer_lost(monkeypatch, lambda result: [a.job_id for a in result.admitted])

        # When the first job succeeds, its tokens admitting the second
        writer.finish_later(AttemptEnd("ADM1", 1, AttemptResult.SUCCEEDED))
        writer.drain()

        # Then the first run admitted it and the run again admitted nothing new, and the
        # writer published it all the same, once
        assert runs == [["ADM2"], []]
        published = [
            dramatiq.Message.decode(body).args for body in broker.queues[names.JOBS_QUEUE].queue
        ]
        assert published == [("ADM2", 1)]
    finally:
        writer.stop()


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
                _no_body,
            ),
        )

    assert list(claim(first_flush).claimed) == [("TWICE1", 1)]
    # When a later flush of the same worker (a second delivery) claims it again
    again = claim(datetime.now(UTC))
    # Then it gets nothing: only the same flush run again gets its own claim back
    assert again.claimed == {}
    assert list(claim(first_flush).claimed) == [("TWICE1", 1)]


def test_a_claim_committed_as_postgresql_went_away_is_withdrawn(
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
    writer: AttemptWriter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an admitted job, and PostgreSQL losing every answer of the writer's flushes
    # after committing them (the writer's tries all fail)
    _submit(engine, settings, "GONE1")
    real_apply_flush = apply_flush

    def commit_then_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
        real_apply_flush(*args, **kwargs)
        raise _lost_answer()

    monkeypatch.setattr(actors.writer, "apply_flush", commit_then_lose_the_answer)

    # When a worker thread claims the attempt, it gets the error (it skips the message)
    with pytest.raises(sa.exc.OperationalError):
        writer.claim("GONE1", 1, redelivered=False)
    # though the claim committed: the lease is started in the worker's name
    assert _lease(engine, "GONE1")[0] == WORKER

    # Then once PostgreSQL answers again, the writer's heartbeat withdraws the claim
    monkeypatch.setattr(actors.writer, "apply_flush", real_apply_flush)
    assert wait_until(lambda: _lease(engine, "GONE1") == (None, None), timeout=5)
    with engine.connect() as conn:
        last = conn.execute(
            sa.text(
                "SELECT previous_status, status, message FROM job_events "
                "WHERE job_id = 'GONE1' ORDER BY id DESC LIMIT 1"
            )
        ).one()
    assert (last.previous_status, last.status) == ("running", "pending")
    assert "lost PostgreSQL's answer to its claim" in last.message
    # and the attempt's next message is claimed and runs
    claimed = writer.claim("GONE1", 1, redelivered=False)
    assert claimed is not None and claimed.attempt == 1


def test_only_the_claim_of_that_flush_is_withdrawn(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given an attempt this worker claimed in a flush that a thread heard of
    _submit(engine, settings, "HEARD1")
    heard = datetime.now(UTC)
    in_autocommit(
        engine,
        lambda conn: apply_flush(
            conn, settings, WORKER, [ClaimRequest("HEARD1", 1)], split_ends([]), heard, _no_body
        ),
    )
    # When an unheard claim of the same attempt, from an earlier flush, is given back
    earlier = heard - timedelta(milliseconds=5)
    withdrawn = in_transaction(
        engine,
        lambda conn: withdraw_unstarted(
            conn, settings, [("HEARD1", 1)], WORKER, datetime.now(UTC), claimed_at=earlier
        ),
    )
    # Then the running attempt keeps its lease
    assert withdrawn == []
    assert _lease(engine, "HEARD1") == (WORKER, heard)
