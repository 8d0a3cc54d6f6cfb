"""Completion: the end of an attempt, recorded through the process's attempt writer.

A succeeded attempt is handed over without waiting (`AttemptWriter.finish_later`): its
outcome is known (completed) and nothing about its message depends on the write. Any other
end waits for its outcome. The writer records the outcome, unblocks or cancels dependents,
records a dead letter, returns the tokens and runs admission in its next flush, then
publishes what was admitted. A final failure raises JobDeadLettered, which Dramatiq's
`Retries(max_retries=0)` (the actor's `throws`) turns into `message.fail()`: RabbitMQ
routes the message through the named dead-letter exchange.
"""

from __future__ import annotations

from actors.runtime import get_runtime
from queue_service import metrics
from queue_service.lifecycle import AttemptEnd
from queue_service.model import JobStatus
from queue_service.retry_policy import AttemptResult, Outcome


class JobDeadLettered(Exception):
    """The job failed for good: raised by the actor so its message is dead-lettered."""


def complete(
    end: AttemptEnd, job_type: str = "unknown", run_seconds: float | None = None
) -> Outcome | None:
    """Record `end`; raise JobDeadLettered when the job failed for good.

    Returns the outcome, or None when the attempt was no longer running or (a success)
    its end is recorded later."""
    writer = get_runtime().writer
    if end.result is AttemptResult.SUCCEEDED:

        def recorded(outcome: Outcome | None) -> None:
            if outcome is not None:
                metrics.attempt_outcome(job_type, outcome.status, None, run_seconds)

        writer.finish_later(end, recorded)
        return None
    outcome = writer.finish(end)
    if outcome is not None:
        metrics.attempt_outcome(job_type, outcome.status, outcome.dead_letter_reason, run_seconds)
    if outcome is not None and outcome.status is JobStatus.FAILED:
        raise JobDeadLettered(f"{outcome.dead_letter_reason}: {end.error}")
    return outcome
