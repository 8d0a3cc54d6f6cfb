"""What happens to a job after an attempt: done, retried after a backoff, failed or cancelled.

Pure functions: the caller passes `now` and the random jitter it drew, records the outcome,
and dead-letters the message when the outcome carries a reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import assert_never

from queue_service.model import JobStatus, RetryConfig


class AttemptResult(StrEnum):
    """How one attempt ended, as the worker saw it."""

    SUCCEEDED = "succeeded"
    RETRYABLE_ERROR = "retryable_error"
    PERMANENT_ERROR = "permanent_error"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"  # the lease expired: the process died mid-attempt
    CANCELLED = "cancelled"  # the attempt was stopped on a cancel request
    # The worker shut down (SIGTERM) before the attempt ended within its grace: the
    # attempt is given back, not counted as a failure (the job gets one more attempt).
    INTERRUPTED = "interrupted"


class DeadLetterReason(StrEnum):
    """Why a failed job's message was dead-lettered."""

    TIMEOUT = "timeout"
    RETRIES_EXHAUSTED = "retries_exhausted"
    NON_RETRYABLE_ERROR = "non_retryable_error"
    WORKER_LOST = "worker_lost"


@dataclass(frozen=True)
class Outcome:
    """The job's next status; when to try again (RETRYING); why it died (FAILED)."""

    status: JobStatus  # COMPLETED, RETRYING, FAILED or CANCELLED
    next_attempt_at: datetime | None = None
    dead_letter_reason: DeadLetterReason | None = None
    extra_attempt: bool = False  # the attempt is given back: max_attempts + 1


# The reason a job fails when a retryable kind of failure happens on its last attempt.
_EXHAUSTED_REASONS = {
    AttemptResult.RETRYABLE_ERROR: DeadLetterReason.RETRIES_EXHAUSTED,
    AttemptResult.TIMEOUT: DeadLetterReason.TIMEOUT,
    AttemptResult.WORKER_LOST: DeadLetterReason.WORKER_LOST,
    AttemptResult.INTERRUPTED: DeadLetterReason.WORKER_LOST,
}

# The highest max_attempts a job may have (the jobs CHECK constraint): an interrupted
# attempt is given back by raising the job's budget by one, up to this.
MAX_ATTEMPTS_LIMIT = 100


def retry_delay(config: RetryConfig, attempt: int, jitter: float) -> float:
    """Seconds to wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed.

    `min(initial * multiplier ** (attempt - 1), max_delay) * (1 + jitter)`, where `jitter`
    is drawn by the caller from `[0, retry_jitter_ratio]`. Huge exponents never overflow:
    the cap is tested in log space before exponentiating. Never negative.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    return max(_capped_backoff(config, attempt - 1) * (1.0 + jitter), 0.0)


def decide_outcome(
    result: AttemptResult,
    attempt: int,
    config: RetryConfig,
    now: datetime,
    jitter: float,
    cancel_requested: bool,
) -> Outcome:
    """Decide the job's status after attempt `attempt` (1-based) ended with `result`.

    - SUCCEEDED: COMPLETED, even if a cancel was requested meanwhile (the work is done).
    - CANCELLED, or any failure while a cancel was requested: CANCELLED, not dead-lettered.
    - PERMANENT_ERROR: FAILED at once, reason `non_retryable_error`.
    - INTERRUPTED (worker shutdown): RETRYING now with one more attempt in the budget.
    - RETRYABLE_ERROR, TIMEOUT, WORKER_LOST: RETRYING at `now + retry_delay(...)` while
      attempts remain, else FAILED with reason `retries_exhausted`, `timeout` or
      `worker_lost` respectively.
    """
    if result is AttemptResult.SUCCEEDED:
        return Outcome(JobStatus.COMPLETED)
    if result is AttemptResult.CANCELLED or cancel_requested:
        return Outcome(JobStatus.CANCELLED)
    if result is AttemptResult.INTERRUPTED and attempt < MAX_ATTEMPTS_LIMIT:
        return Outcome(JobStatus.RETRYING, next_attempt_at=now, extra_attempt=True)
    match result:
        case AttemptResult.PERMANENT_ERROR:
            return Outcome(
                JobStatus.FAILED, dead_letter_reason=DeadLetterReason.NON_RETRYABLE_ERROR
            )
        case (
            AttemptResult.RETRYABLE_ERROR
            | AttemptResult.TIMEOUT
            | AttemptResult.WORKER_LOST
            | AttemptResult.INTERRUPTED
        ):
            if attempt < config.max_attempts:
                delay = retry_delay(config, attempt, jitter)
                return Outcome(JobStatus.RETRYING, next_attempt_at=now + timedelta(seconds=delay))
            return Outcome(JobStatus.FAILED, dead_letter_reason=_EXHAUSTED_REASONS[result])
        case _:
            assert_never(result)


def _capped_backoff(config: RetryConfig, exponent: int) -> float:
    """`min(initial * multiplier ** exponent, max_delay)`, computed without overflow."""
    # Submission validates these ranges; clamping keeps a bad stored row from producing a
    # negative or shrinking delay instead of crashing the completion path.
    initial = max(config.initial_delay_seconds, 0.0)
    cap = max(config.max_delay_seconds, 0.0)
    multiplier = max(config.backoff_multiplier, 1.0)
    if initial == 0.0 or initial >= cap:
        return min(initial, cap)
    # initial * m**e >= cap  <=>  e * log(m) >= log(cap / initial): decide that before
    # building m**e, which overflows a float for, e.g., 10**400.
    if exponent * math.log(multiplier) >= math.log(cap / initial):
        return cap
    return initial * multiplier**exponent
