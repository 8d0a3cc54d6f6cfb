"""Unit tests of backoff delays and of the outcome decided after each attempt."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from queue_service.model import JobStatus, RetryConfig
from queue_service.retry_policy import (
    AttemptResult,
    DeadLetterReason,
    Outcome,
    decide_outcome,
    retry_delay,
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
# Scenario 5's unreliable_api_call: 3 attempts, x2, starting at 1 s (max delay defaults to 300).
SCENARIO_5 = RetryConfig(max_attempts=3, backoff_multiplier=2, initial_delay_seconds=1)


@pytest.mark.parametrize(
    ("config", "attempt", "jitter", "expected"),
    [
        pytest.param(SCENARIO_5, 1, 0.0, 1.0, id="scenario-5-after-attempt-1"),
        pytest.param(SCENARIO_5, 2, 0.0, 2.0, id="scenario-5-after-attempt-2"),
        pytest.param(SCENARIO_5, 3, 0.0, 4.0, id="third-doubling"),
        pytest.param(SCENARIO_5, 2, 0.1, 2.2, id="jitter-scales-the-delay"),
        pytest.param(RetryConfig(max_delay_seconds=5), 4, 0.0, 5.0, id="capped-at-max-delay"),
        pytest.param(RetryConfig(max_delay_seconds=5), 4, 0.1, 5.5, id="jitter-applies-after-cap"),
        pytest.param(RetryConfig(max_delay_seconds=8), 4, 0.0, 8.0, id="exactly-at-cap"),
        pytest.param(
            RetryConfig(max_attempts=100, backoff_multiplier=10), 100, 0.0, 300.0, id="no-overflow"
        ),
        pytest.param(
            RetryConfig(backoff_multiplier=1e300, max_delay_seconds=1e6),
            100,
            0.0,
            1e6,
            id="huge-base",
        ),
        pytest.param(
            RetryConfig(backoff_multiplier=1), 50, 0.0, 1.0, id="multiplier-1-is-constant"
        ),
        pytest.param(RetryConfig(initial_delay_seconds=0), 10, 0.1, 0.0, id="zero-initial-delay"),
        pytest.param(
            RetryConfig(initial_delay_seconds=10, max_delay_seconds=3),
            1,
            0.0,
            3.0,
            id="cap-below-initial",
        ),
        pytest.param(
            RetryConfig(backoff_multiplier=3, initial_delay_seconds=0.5),
            3,
            0.0,
            4.5,
            id="fractional",
        ),
    ],
)
def test_retry_delay(config: RetryConfig, attempt: int, jitter: float, expected: float) -> None:
    assert math.isclose(retry_delay(config, attempt, jitter), expected)


def test_retry_delay_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="1-based"):
        retry_delay(SCENARIO_5, 0, 0.0)


def retrying_in(seconds: float) -> Outcome:
    return Outcome(JobStatus.RETRYING, next_attempt_at=NOW + timedelta(seconds=seconds))


def failed(reason: DeadLetterReason) -> Outcome:
    return Outcome(JobStatus.FAILED, dead_letter_reason=reason)


COMPLETED = Outcome(JobStatus.COMPLETED)
CANCELLED = Outcome(JobStatus.CANCELLED)
EXHAUSTED = failed(DeadLetterReason.RETRIES_EXHAUSTED)
R = AttemptResult
TWO_ATTEMPTS = RetryConfig(max_attempts=2)
HUNDRED_ATTEMPTS = RetryConfig(max_attempts=100, backoff_multiplier=10)

# id -> (result, attempt, config, cancel_requested, expected outcome); jitter is 0.
OUTCOMES: dict[str, tuple[AttemptResult, int, RetryConfig, bool, Outcome]] = {
    # Scenario 5's unreliable_api_call: fails twice, retried after 1 s then 2 s, then succeeds.
    "s5-attempt-1-retries-in-1s": (R.RETRYABLE_ERROR, 1, SCENARIO_5, False, retrying_in(1)),
    "s5-attempt-2-retries-in-2s": (R.RETRYABLE_ERROR, 2, SCENARIO_5, False, retrying_in(2)),
    "s5-attempt-3-succeeds": (R.SUCCEEDED, 3, SCENARIO_5, False, COMPLETED),
    "retries-exhausted": (R.RETRYABLE_ERROR, 3, SCENARIO_5, False, EXHAUSTED),
    "beyond-max-attempts": (R.RETRYABLE_ERROR, 4, SCENARIO_5, False, EXHAUSTED),
    "single-attempt-budget": (R.RETRYABLE_ERROR, 1, RetryConfig(max_attempts=1), False, EXHAUSTED),
    "late-attempt-capped": (R.RETRYABLE_ERROR, 99, HUNDRED_ATTEMPTS, False, retrying_in(300)),
    # Scenario 5's will_timeout: 2 attempts; the first timeout retries, the second fails.
    "timeout-retries": (R.TIMEOUT, 1, TWO_ATTEMPTS, False, retrying_in(1)),
    "timeout-exhausted": (R.TIMEOUT, 2, TWO_ATTEMPTS, False, failed(DeadLetterReason.TIMEOUT)),
    "worker-lost-retries": (R.WORKER_LOST, 1, SCENARIO_5, False, retrying_in(1)),
    "worker-lost-exhausted": (
        R.WORKER_LOST, 3, SCENARIO_5, False, failed(DeadLetterReason.WORKER_LOST)
    ),
    # Scenario 5's will_fail_permanently: no retry even with attempts left.
    "permanent-error": (
        R.PERMANENT_ERROR, 1, SCENARIO_5, False, failed(DeadLetterReason.NON_RETRYABLE_ERROR)
    ),
    # Cancellation: finished work stays done; any other ending becomes cancelled.
    "success-beats-cancel": (R.SUCCEEDED, 1, SCENARIO_5, True, COMPLETED),
    "cancelled": (R.CANCELLED, 1, SCENARIO_5, False, CANCELLED),
    "cancelled-last-attempt": (R.CANCELLED, 3, SCENARIO_5, True, CANCELLED),
    "cancel-over-retry": (R.RETRYABLE_ERROR, 1, SCENARIO_5, True, CANCELLED),
    "cancel-over-exhausted": (R.RETRYABLE_ERROR, 3, SCENARIO_5, True, CANCELLED),
    "cancel-over-permanent": (R.PERMANENT_ERROR, 1, SCENARIO_5, True, CANCELLED),
    "cancel-over-timeout": (R.TIMEOUT, 1, SCENARIO_5, True, CANCELLED),
    "cancel-over-worker-lost": (R.WORKER_LOST, 3, SCENARIO_5, True, CANCELLED),
}  # fmt: skip


@pytest.mark.parametrize(
    ("result", "attempt", "config", "cancel_requested", "expected"),
    OUTCOMES.values(),
    ids=OUTCOMES.keys(),
)
def test_decide_outcome(
    result: AttemptResult,
    attempt: int,
    config: RetryConfig,
    cancel_requested: bool,
    expected: Outcome,
) -> None:
    assert decide_outcome(result, attempt, config, NOW, 0.0, cancel_requested) == expected


def test_decide_outcome_applies_jitter() -> None:
    outcome = decide_outcome(R.RETRYABLE_ERROR, 2, SCENARIO_5, NOW, 0.1, False)

    assert outcome.status is JobStatus.RETRYING
    assert outcome.next_attempt_at is not None
    # 2 s * 1.1; timedelta keeps microseconds, so allow the float rounding.
    delay = outcome.next_attempt_at - NOW
    assert abs(delay - timedelta(seconds=2.2)) < timedelta(microseconds=2)


def test_dead_letter_reasons_are_the_wire_strings() -> None:
    assert [str(reason) for reason in DeadLetterReason] == [
        "timeout", "retries_exhausted", "non_retryable_error", "worker_lost"
    ]  # fmt: skip


@pytest.mark.parametrize("attempt", [1, 3])
def test_an_interrupted_attempt_is_given_back_not_counted(attempt: int) -> None:
    # Given a worker shut down while attempt 1, or the last attempt (3 of 3), still ran
    outcome = decide_outcome(R.INTERRUPTED, attempt, SCENARIO_5, NOW, 0.1, False)

    # Then the job is retried at once, with one more attempt in its budget
    assert outcome == Outcome(JobStatus.RETRYING, next_attempt_at=NOW, extra_attempt=True)


def test_an_interrupted_attempt_with_a_cancel_requested_is_cancelled() -> None:
    assert decide_outcome(R.INTERRUPTED, 1, SCENARIO_5, NOW, 0.0, True) == Outcome(
        JobStatus.CANCELLED
    )


def test_an_interrupted_attempt_at_the_attempt_limit_counts() -> None:
    config = RetryConfig(max_attempts=100)
    outcome = decide_outcome(R.INTERRUPTED, 100, config, NOW, 0.0, False)
    assert outcome == Outcome(JobStatus.FAILED, dead_letter_reason=DeadLetterReason.WORKER_LOST)
