"""Publishing admitted attempts to RabbitMQ. Messages carry ids, never job data.

Always called after the admitting transaction committed. Anything published can be
published again: the worker's claim lets one delivery per attempt through.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dramatiq
import pika

from queue_service import names
from queue_service.logging import get_logger
from queue_service.model import Priority

log = get_logger(__name__)


@dataclass(frozen=True)
class Admitted:
    """An attempt that holds its tokens and waits for a worker."""

    job_id: str
    attempt: int
    priority: Priority


def job_message(job_id: str, attempt: int, priority: Priority) -> dramatiq.Message[None]:
    return dramatiq.Message(
        queue_name=names.JOBS_QUEUE,
        actor_name=names.RUN_JOB_ACTOR,
        args=(job_id, attempt),
        kwargs={},
        options={"broker_priority": priority.message_priority},
    )


def dead_letter_body(job_id: str, attempt: int) -> dict[str, Any]:
    """The message body a dead letter records: the attempt's job message."""
    return job_message(job_id, attempt, Priority.NORMAL).asdict()


def publish_admitted(broker: dramatiq.Broker, admitted: Iterable[Admitted]) -> int:
    """Publish each admitted attempt; a failure is logged and left to maintenance.

    Maintenance republishes admitted attempts no worker claimed within
    `republish_after_seconds`, so a broker outage delays jobs but loses none.
    """
    sent = 0
    for item in admitted:
        try:
            broker.enqueue(job_message(item.job_id, item.attempt, item.priority))
            sent += 1
        except Exception as error:  # the broker is down: maintenance republishes later
            log.warning(
                "publish_failed", job_id=item.job_id, attempt=item.attempt, error=str(error)
            )
    return sent


def publish_dead_letter(
    broker: dramatiq.Broker, job_id: str, attempt: int, reason: str, error: str | None
) -> None:
    """Put a dead letter straight on the dead-letter exchange.

    Used when no message is at hand to reject, e.g. a job whose worker died on its last
    attempt: its redelivered message is skipped, so maintenance publishes the dead letter.
    """
    message = job_message(job_id, attempt, Priority.NORMAL)
    channel = broker.channel  # type: ignore[attr-defined]
    broker.declare_queue(names.JOBS_QUEUE, ensure=True)  # type: ignore[call-arg]  # declares the DLX too
    channel.basic_publish(
        exchange=names.DEAD_LETTER_EXCHANGE,
        routing_key=names.DEAD_LETTER_QUEUE,
        body=message.encode(),
        properties=pika.BasicProperties(
            delivery_mode=2,
            headers={"x-taskq-reason": reason, "x-taskq-error": json.dumps(error)},
        ),
    )
