"""Keeping RabbitMQ's dead-letter queue in step with the dead_letters table.

Replaying or discarding a dead letter resolves its row; the message itself stays in
`taskq.dead-letters` until this compaction (run by the periodic maintenance sweep) drops
the messages whose dead letter is resolved. Messages still open are put back in order, and
an open dead letter whose message a broker restart took is published again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import dramatiq
import sqlalchemy as sa

from queue_service import names
from queue_service.logging import get_logger
from queue_service.rabbitmq.publishing import publish_dead_letter
from queue_service.repository import dead_letters as dead_letters_repo

log = get_logger(__name__)

# An open dead letter without a message in the queue gets one again after this long.
RESTORE_AFTER = timedelta(minutes=1)


def _job_attempt(body: bytes) -> tuple[str, int] | None:
    try:
        message = dramatiq.Message.decode(body)
        job_id, attempt = message.args
        return str(job_id), int(attempt)
    except Exception:  # not one of ours: keep it for an operator to look at
        return None


def compact_dead_letter_queue(
    engine: sa.Engine,
    broker: dramatiq.Broker,
    max_messages: int = 10_000,
    now: datetime | None = None,
) -> int:
    """Drop dead messages whose dead letter was replayed or discarded; returns how many.

    When the whole queue was read, an open dead letter older than `RESTORE_AFTER` with no
    message in it gets one again (`publish_dead_letter`): job messages are transient
    (broker.JOB_MESSAGE_DELIVERY_MODE), and so is what RabbitMQ dead-letters from them, so a
    broker restart empties the queue of those; the table keeps every dead letter."""
    channel: Any = broker.channel  # type: ignore[attr-defined]
    broker.declare_queue(names.JOBS_QUEUE, ensure=True)  # type: ignore[call-arg]
    fetched: list[tuple[int, tuple[str, int] | None]] = []
    for _ in range(max_messages):
        method, _properties, body = channel.basic_get(names.DEAD_LETTER_QUEUE, auto_ack=False)
        if method is None:
            break
        fetched.append((method.delivery_tag, _job_attempt(body)))
    whole_queue = len(fetched) < max_messages
    keys = {key for _, key in fetched if key is not None}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT job_id, attempts FROM dead_letters WHERE resolved_at IS NULL "
                "AND job_id = ANY(:ids)"
            ),
            {"ids": sorted({job_id for job_id, _ in keys})},
        ).all()
        still_open = {(r.job_id, r.attempts) for r in rows}
        missing: list[dead_letters_repo.OpenLetter] = []
        # Only when some open letter has no message (the usual sweep reads no more rows);
        # older than RESTORE_AFTER: a worker's rejected message may still be on its way.
        if whole_queue and len(still_open & keys) < dead_letters_repo.count_open(conn):
            died_before = (now or datetime.now(UTC)) - RESTORE_AFTER
            missing = [
                letter
                for letter in dead_letters_repo.open_before(conn, died_before, max_messages)
                if (letter.job_id, letter.attempts) not in keys
            ]
    dropped = 0
    for tag, key in fetched:
        if key is not None and key not in still_open:
            channel.basic_ack(tag)
            dropped += 1
    # Unacknowledged messages go back to the queue in their original order.
    if fetched:
        channel.basic_recover(requeue=True)
    for letter in missing:
        publish_dead_letter(
            broker, letter.job_id, letter.attempts, letter.reason, letter.last_error
        )
    if dropped or missing:
        log.info(
            "dead_letter_queue_compacted",
            dropped=dropped,
            kept=len(fetched) - dropped,
            restored=len(missing),
        )
    return dropped
