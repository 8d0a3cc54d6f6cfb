"""The dead-letter queue compaction drops exactly the messages of resolved dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

import pika
import sqlalchemy as sa

from queue_service import names
from queue_service.rabbitmq.broker import build_broker, connection_parameters
from queue_service.rabbitmq.dead_letters import compact_dead_letter_queue
from queue_service.rabbitmq.publishing import publish_dead_letter
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job


def _dlq_bodies(settings: Settings) -> list[bytes]:
    """Peek at the dead-letter queue without consuming it."""
    params = connection_parameters(settings.broker_url, "taskq-tests peek")
    connection = pika.BlockingConnection(pika.ConnectionParameters(**params))
    try:
        channel = connection.channel()
        bodies = []
        while True:
            method, _, body = channel.basic_get(names.DEAD_LETTER_QUEUE, auto_ack=False)
            if method is None:
                break
            bodies.append(body)
        channel.close()  # unacked messages return to the queue
        return bodies
    finally:
        connection.close()


def test_compaction_keeps_open_letters_and_drops_resolved_ones(
    clean_state: None, settings: Settings, engine: sa.Engine
) -> None:
    # Given two failed jobs, each with a dead letter in the table and a message in the DLQ
    now = datetime.now(UTC)
    broker = build_broker(settings, "taskq-tests compaction")
    letter_ids = {}
    with engine.begin() as conn:
        for job_id in ("kept_job", "discarded_job"):
            submit_job(conn, settings, JobSpec(job_id=job_id), now)
            letter_ids[job_id] = dead_letters_repo.record_dead_letter(
                conn,
                job_id=job_id,
                type_="noop",
                reason="retries_exhausted",
                attempts=1,
                last_error="boom",
                message={},
                now=now,
            )
    for job_id in ("kept_job", "discarded_job"):
        publish_dead_letter(broker, job_id, 1, "retries_exhausted", "boom")
    # and one of them discarded by an operator
    with engine.begin() as conn:
        dead_letters_repo.resolve(conn, letter_ids["discarded_job"], "discarded", now)

    # When the queue is compacted
    dropped = compact_dead_letter_queue(engine, broker)

    # Then only the open letter's message is left in RabbitMQ
    assert dropped == 1
    bodies = _dlq_bodies(settings)
    assert len(bodies) == 1
    assert b"kept_job" in bodies[0]
    broker.close()
