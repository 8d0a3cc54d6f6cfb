"""The one message the product sends: "run attempt N of job X". Ids only, never job data."""

from __future__ import annotations

from typing import Any

import dramatiq

from queue_service import names
from queue_service.model import Priority


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
