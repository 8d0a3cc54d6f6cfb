"""The worker's flush through libpq's pipeline (`worker_batch.FlushPipeline`): flushes sent
ahead of their answers are answered in order, each once committed, and a failed flush
fails alone."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
import sqlalchemy as sa

from queue_service.db import in_transaction
from queue_service.lifecycle import AttemptEnd
from queue_service.model import JobStatus
from queue_service.retry_policy import AttemptResult
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch
from queue_service.worker_batch import ClaimRequest, FlushPipeline, SplitEnds, split_ends

WORKER = "test-worker"


@pytest.fixture
def pipeline(settings: Settings, engine: sa.Engine) -> Iterator[FlushPipeline]:
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    flushes = FlushPipeline(conninfo, settings, WORKER)
    yield flushes
    flushes.close()


def _submit(engine: sa.Engine, settings: Settings, *specs: JobSpec) -> None:
    in_transaction(
        engine, lambda conn: submit_batch(conn, settings, list(specs), datetime.now(UTC))
    )


def _lease_started(engine: sa.Engine, job_id: str) -> bool:
    with engine.connect() as conn:
        started = conn.execute(
            sa.text("SELECT started_at IS NOT NULL FROM leases WHERE job_id = :id"), {"id": job_id}
        ).scalar_one()
    return bool(started)


def test_flushes_sent_ahead_are_answered_in_order_once_committed(
    clean_state: None, engine: sa.Engine, settings: Settings, pipeline: FlushPipeline
) -> None:
    # Given two admitted jobs and a child of the first
    _submit(engine, settings, JobSpec(job_id="p"), JobSpec(job_id="q"))
    _submit(engine, settings, JobSpec(job_id="c", depends_on=("p",)))
    now = datetime.now(UTC)

    # When two claims go out before either answer is read
    pipeline.send([ClaimRequest("p", 1)], split_ends([]), now)
    pipeline.send([ClaimRequest("q", 1)], split_ends([]), now)

    # Then the answers come in the order sent, and each claim is committed by then
    first = pipeline.receive()
    assert list(first.claimed) == [("p", 1)] and first.claimed[("p", 1)].type == "noop"
    assert _lease_started(engine, "p")
    second = pipeline.receive()
    assert list(second.claimed) == [("q", 1)]

    # And a success with a second delivery of a claimed attempt: recorded once, claimed never
    done = split_ends([AttemptEnd("p", 1, AttemptResult.SUCCEEDED, value={"n": 1})])
    pipeline.send([ClaimRequest("q", 1, redelivered=True)], done, datetime.now(UTC))
    third = pipeline.receive()
    assert third.claimed == {}
    assert third.outcomes[("p", 1)].status is JobStatus.COMPLETED
    assert [(a.job_id, a.attempt) for a in third.admitted] == [("c", 1)]


def test_a_failed_flush_fails_alone(
    clean_state: None, engine: sa.Engine, settings: Settings, pipeline: FlushPipeline
) -> None:
    # Given two admitted jobs, both claimed
    _submit(engine, settings, JobSpec(job_id="a"), JobSpec(job_id="b"))
    pipeline.send([ClaimRequest("a", 1), ClaimRequest("b", 1)], split_ends([]), datetime.now(UTC))
    assert len(pipeline.receive().claimed) == 2

    # When a flush whose result cannot be stored goes out, and a good one right behind it
    broken = SplitEnds([(AttemptEnd("a", 1, AttemptResult.SUCCEEDED), "{not json")], [])
    pipeline.send([], broken, datetime.now(UTC))
    good = split_ends([AttemptEnd("b", 1, AttemptResult.SUCCEEDED, value=2)])
    pipeline.send([], good, datetime.now(UTC))

    # Then the first raises, nothing of it is stored, and the second is recorded
    with pytest.raises(psycopg.DatabaseError):
        pipeline.receive()
    assert pipeline.receive().outcomes[("b", 1)].status is JobStatus.COMPLETED
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status FROM jobs ORDER BY id")).all()
    statuses = {row.id: row.status for row in rows}
    assert statuses == {"a": "pending", "b": "completed"}  # a: running on its lease
    assert _lease_started(engine, "a")
