"""The dead-letter queue compaction drops exactly the messages of resolved dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
import pika
import sqlalchemy as sa

from queue_service import names
from queue_service.rabbitmq.broker import build_broker, connection_parameters
from queue_service.rabbitmq.dead_letters import compact_dead_letter_queue
from queue_service.rabbitmq.publishing import publish_dead_letter
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_job
from tests.support.job_rows import dead_letter_by_hand


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
            letter_ids[job_id] = dead_letter_by_hand(conn, job_id, now)
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


def test_compaction_restores_the_message_of_an_open_letter_a_restart_took(
    clean_state: None, settings: Settings, engine: sa.Engine
) -> None:
    # Given two open dead letters and an empty dead-letter queue (job messages are transient,
    # so a broker restart takes what RabbitMQ dead-lettered from them): one died two minutes
    # ago, the other just now (its worker's rejected message may still be on its way)
    now = datetime.now(UTC)
    broker = build_broker(settings, "taskq-tests restore")
    with engine.begin() as conn:
        for job_id, died in (("lost_job", now - timedelta(minutes=2)), ("fresh_job", now)):
            submit_job(conn, settings, JobSpec(job_id=job_id), now)
            dead_letter_by_hand(conn, job_id, died, attempts=3)

    # When the queue is compacted, twice
    compact_dead_letter_queue(engine, broker, now=now)
    compact_dead_letter_queue(engine, broker, now=now)

    # Then the old letter has its message again, once, and the fresh one is left alone
    bodies = _dlq_bodies(settings)
    assert len(bodies) == 1
    message = dramatiq.Message.decode(bodies[0])
    assert tuple(message.args) == ("lost_job", 3)
    broker.close()
