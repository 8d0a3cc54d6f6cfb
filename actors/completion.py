"""Completion: the end of an attempt, recorded through the process's attempt writer.

The writer records the outcome, unblocks or cancels dependents, records a dead letter,
returns the tokens and runs admission in the transaction of its next batch, then
publishes what was admitted. A final failure raises JobDeadLettered, which Dramatiq's
`Retries(max_retries=0)` (the actor's `throws`) turns into `message.fail()`: RabbitMQ
routes the message through the named dead-letter exchange.
"""

from __future__ import annotations

from actors.runtime import get_runtime
from queue_service import metrics
from queue_service.lifecycle import AttemptEnd
from queue_service.model import JobStatus
from queue_service.retry_policy import Outcome


class JobDeadLettered(Exception):
    """The job failed for good: raised by the actor so its message is dead-lettered."""


def complete(
    end: AttemptEnd, job_type: str = "unknown", run_seconds: float | None = None
) -> Outcome | None:
    """Record `end`; raise JobDeadLettered when the job failed for good."""
    outcome = get_runtime().writer.finish(end)
    if outcome is not None:
        metrics.attempt_outcome(job_type, outcome.status, outcome.dead_letter_reason, run_seconds)
    if outcome is not None and outcome.status is JobStatus.FAILED:
        raise JobDeadLettered(f"{outcome.dead_letter_reason}: {end.error}")
    return outcome
