"""Completion: the end of an attempt, recorded in one transaction, then published.

`finish_attempt` (queue_service.lifecycle) records the outcome, releases the lease,
unblocks or cancels dependents, records a dead letter and runs admission, all in one
transaction; after it commits, the newly admitted attempts are published.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from actors.runtime import get_runtime
from queue_service.db import in_transaction
from queue_service.lifecycle import Consequences, finish_attempt
from queue_service.model import Priority
from queue_service.publisher import job_message, publish_admitted
from queue_service.retry_policy import AttemptResult


class JobDeadLettered(Exception):
    """The job failed for good: raised by the actor so its message is dead-lettered."""


def finish_and_publish(
    job_id: str, attempt: int, result: AttemptResult, error: str | None, value: Any
) -> Consequences:
    runtime = get_runtime()
    body = job_message(job_id, attempt, Priority.NORMAL).asdict()
    consequences = in_transaction(
        runtime.engine,
        lambda conn: finish_attempt(
            conn,
            runtime.settings,
            job_id=job_id,
            attempt=attempt,
            result=result,
            error=error,
            value=value,
            now=datetime.now(UTC),
            dead_letter_message=body,
        ),
    )
    publish_admitted(runtime.broker, consequences.admitted)
    return consequences
