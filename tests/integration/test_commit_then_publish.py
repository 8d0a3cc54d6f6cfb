"""commit_then_publish: what a transaction admitted is published only once it committed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker

from queue_service import names
from queue_service.db import in_transaction
from queue_service.model import Admitted
from queue_service.rabbitmq.publishing import commit_then_publish
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job


class LeaseWitness(StubBroker):
    """An in-memory broker that records, for each message, whether the attempt's lease
    could be seen from another connection when the message was sent."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(middleware=[])
        self.engine = engine
        self.sent: list[tuple[tuple[Any, ...], bool]] = []
        self.declare_queue(names.JOBS_QUEUE)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        with self.engine.connect() as conn:
            visible = conn.execute(
                sa.text("SELECT count(*) FROM leases WHERE job_id = :id"), {"id": message.args[0]}
            ).scalar_one()
        self.sent.append((message.args, visible == 1))
        return super().enqueue(message, delay=delay)


def _pending_job(engine: sa.Engine, settings: Settings, job_id: str) -> None:
    now = datetime.now(UTC)
    in_transaction(
        engine, lambda conn: submit_job(conn, settings, JobSpec(job_id=job_id), now, admit=False)
    )


def test_the_admitted_attempt_is_published_after_its_commit(
    shared_product_stopped: None,  # its maintenance would admit the job first
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
) -> None:
    # Given a pending job nobody admitted yet
    _pending_job(engine, settings, "ctp_1")
    broker = LeaseWitness(engine)

    # When admission runs through commit_then_publish
    admitted = commit_then_publish(
        engine, broker, lambda conn: admit_ready_jobs(conn, settings, datetime.now(UTC))
    )

    # Then its one message went out, and the lease was already committed when it did
    assert [a.job_id for a in admitted] == ["ctp_1"]
    assert broker.sent == [(("ctp_1", 1), True)]


def test_nothing_is_published_when_the_transaction_rolls_back(
    shared_product_stopped: None,  # its maintenance would admit the job first
    clean_state: None,
    engine: sa.Engine,
    settings: Settings,
) -> None:
    # Given a pending job
    _pending_job(engine, settings, "ctp_2")
    broker = LeaseWitness(engine)

    # When the work admits it and then fails
    def work(conn: sa.Connection) -> list[Admitted]:
        assert admit_ready_jobs(conn, settings, datetime.now(UTC))
        raise RuntimeError("the rest of the work failed")

    with pytest.raises(RuntimeError):
        commit_then_publish(engine, broker, work)

    # Then no message exists, and the job holds no lease
    assert broker.sent == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one() == 0
