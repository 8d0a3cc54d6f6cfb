"""State changes after submission: finishing an attempt, cancelling, replaying, and the
maintenance duties (promote due jobs, reclaim leases of dead workers).

Each function runs inside the caller's transaction and returns the attempts admitted
as a consequence; the caller commits, then publishes them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service import errors
from queue_service.admission import PoolState
from queue_service.model import CANCELLABLE_STATUSES, JobStatus, RetryConfig
from queue_service.publisher import Admitted
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import leases as leases_repo
from queue_service.repository import pool as pool_repo
from queue_service.retry_policy import AttemptResult, Outcome, decide_outcome
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings


@dataclass
class Consequences:
    """What a state change set in motion, for the caller to act on after commit."""

    outcome: Outcome | None = None
    admitted: list[Admitted] = field(default_factory=list)
    dead_letter_id: int | None = None


def _transition_events(
    changes: list[jobs_repo.StatusChange], at: datetime, **kw: Any
) -> list[events_repo.JobEvent]:
    return [
        events_repo.transition(c.job_id, c.attempt, c.previous_status, c.status, at, **kw)
        for c in changes
    ]


def _release(
    conn: sa.Connection, job_id: str, attempt: int | None, now: datetime
) -> PoolState | None:
    """Delete the lease and give its tokens back; the pool state after, when it had one.

    The event is written after the pool row is locked, so the order of token events
    (their ids) is the order in which the pool changed.
    """
    lease = leases_repo.release_lease(conn, job_id, attempt)
    if lease is None:
        return None
    pool = pool_repo.return_tokens(conn, lease.cpu_units, lease.memory_mb)
    events_repo.record_events(
        conn,
        [
            events_repo.JobEvent(
                job_id=job_id,
                event="tokens_released",
                attempt=lease.attempt,
                message=f"returned {lease.cpu_units} CPU units and {lease.memory_mb} MB",
                at=now,
                data={"cpu_units": lease.cpu_units, "memory_mb": lease.memory_mb},
            )
        ],
    )
    return pool


def _cascade_cancel(conn: sa.Connection, root_id: str, reason: str, now: datetime) -> None:
    # Repeat until nothing is left: a submission adding a dependent to a descendant commits
    # while the statement waits on that descendant's row lock, so the statement's snapshot
    # misses the new edge; the next statement's snapshot has it.
    while changes := jobs_repo.cancel_descendants(conn, root_id, reason, now):
        for change in changes:
            if change.previous_status == JobStatus.PENDING:
                _release(conn, change.job_id, None, now)  # it may hold an unclaimed lease
        events_repo.record_events(
            conn, _transition_events(changes, now, message=f"cancelled: {reason}")
        )


def retry_config_of(job: sa.Row[Any]) -> RetryConfig:
    return RetryConfig(
        max_attempts=job.max_attempts,
        backoff_multiplier=job.backoff_multiplier,
        initial_delay_seconds=job.initial_delay_seconds,
        max_delay_seconds=job.max_delay_seconds,
    )


def finish_attempt(
    conn: sa.Connection,
    settings: Settings,
    *,
    job_id: str,
    attempt: int,
    result: AttemptResult,
    error: str | None,
    value: Any,
    now: datetime,
    dead_letter_message: dict[str, Any],
) -> Consequences:
    """Record the end of one attempt: outcome, tokens, dependents, dead letter, admission.

    Guarded by (job_id, status running, attempt): finishing an attempt twice, or one that
    maintenance already reclaimed, changes nothing but a leftover lease.
    """
    job = jobs_repo.lock_running(conn, job_id, attempt)
    if job is None:
        _release(conn, job_id, attempt, now)
        return Consequences(admitted=admit_ready_jobs(conn, settings, now))
    jitter = random.uniform(0, settings.retry_jitter_ratio)
    outcome = decide_outcome(
        result, attempt, retry_config_of(job), now, jitter, job.cancel_requested_at is not None
    )
    cancel_reason = "cancelled_by_request" if outcome.status is JobStatus.CANCELLED else None
    jobs_repo.record_outcome(
        conn,
        job_id,
        status=outcome.status.value,
        next_attempt_at=outcome.next_attempt_at,
        last_error=error,
        cancel_reason=cancel_reason,
        result=value,
        now=now,
    )
    detail = {"result": result.value, "error": error}
    if outcome.next_attempt_at is not None:
        detail["next_attempt_at"] = outcome.next_attempt_at.isoformat()
    events_repo.record_events(
        conn,
        [
            events_repo.transition(
                job_id,
                attempt,
                JobStatus.RUNNING.value,
                outcome.status.value,
                now,
                message=f"attempt {attempt} {result.value}" + (f": {error}" if error else ""),
                level="info" if result is AttemptResult.SUCCEEDED else "warning",
                data=detail,
            )
        ],
    )
    consequences = Consequences(outcome=outcome)
    # Dependents before the pool row: the pool is always the last lock taken.
    if outcome.status is JobStatus.COMPLETED:
        ready = jobs_repo.unblock_dependents(conn, job_id, now, settings.aging_seconds_per_level)
        events_repo.record_events(
            conn, _transition_events(ready, now, message=f"{job_id} completed")
        )
    elif outcome.status is JobStatus.FAILED:
        _cascade_cancel(conn, job_id, f"upstream_failed:{job_id}", now)
        consequences.dead_letter_id = dead_letters_repo.record_dead_letter(
            conn,
            job_id=job_id,
            type_=job.type,
            reason=outcome.dead_letter_reason or "failed",
            attempts=attempt,
            last_error=error,
            message=dead_letter_message,
            now=now,
        )
    elif outcome.status is JobStatus.CANCELLED:
        _cascade_cancel(conn, job_id, f"upstream_cancelled:{job_id}", now)
    pool = _release(conn, job_id, attempt, now)
    consequences.admitted = admit_ready_jobs(conn, settings, now, locked_pool=pool)
    return consequences


def cancel_job(conn: sa.Connection, settings: Settings, job_id: str, now: datetime) -> Consequences:
    """Cancel a waiting job now, or ask the worker running it to stop (202 for the API)."""
    job = jobs_repo.get_job(conn, job_id)
    if job is None:
        raise errors.JobNotFound(f"job {job_id!r} not found")
    if job.status == JobStatus.RUNNING:
        if jobs_repo.request_cancel_running(conn, job_id, now):
            events_repo.record_events(
                conn,
                [
                    events_repo.JobEvent(
                        job_id=job_id,
                        event="cancel_requested",
                        attempt=job.attempts,
                        message="cancellation requested; the running attempt is being stopped",
                        at=now,
                    )
                ],
            )
            return Consequences()
        job = jobs_repo.get_job(conn, job_id)  # it finished meanwhile
    if job is None or job.status not in CANCELLABLE_STATUSES:
        status = job.status if job is not None else "unknown"
        raise errors.NotCancellable(f"job {job_id!r} is {status} and cannot be cancelled")
    change = jobs_repo.cancel_waiting_job(conn, job_id, "cancelled_by_request", now)
    if change is None:
        raise errors.NotCancellable(f"job {job_id!r} changed status; try again")
    events_repo.record_events(
        conn, _transition_events([change], now, message="cancelled by request")
    )
    _cascade_cancel(conn, job_id, f"upstream_cancelled:{job_id}", now)
    _release(conn, job_id, None, now)
    return Consequences(admitted=admit_ready_jobs(conn, settings, now))


def replay_dead_letter(
    conn: sa.Connection, settings: Settings, dead_letter_id: int, now: datetime
) -> Consequences:
    """Run a dead-lettered job again with a fresh attempt budget."""
    letter = dead_letters_repo.get(conn, dead_letter_id)
    if letter is None:
        raise errors.DeadLetterNotFound(f"dead letter {dead_letter_id} not found")
    if letter.resolved_at is not None:
        raise errors.NotReplayable(f"dead letter {dead_letter_id} was already {letter.resolution}")
    change = jobs_repo.requeue_failed(conn, letter.job_id, now, settings.aging_seconds_per_level)
    if change is None:
        raise errors.NotReplayable(f"job {letter.job_id!r} is no longer failed")
    dead_letters_repo.resolve(conn, dead_letter_id, "replayed", now)
    restored = jobs_repo.restore_upstream_failed(conn, letter.job_id)
    events_repo.record_events(
        conn,
        _transition_events([change], now, message=f"replayed from dead letter {dead_letter_id}")
        + _transition_events(restored, now, message=f"{letter.job_id} replayed"),
    )
    return Consequences(admitted=admit_ready_jobs(conn, settings, now))


def promote_due_jobs(conn: sa.Connection, settings: Settings, now: datetime) -> int:
    changes = jobs_repo.promote_due(conn, now, settings.aging_seconds_per_level, limit=1000)
    events_repo.record_events(conn, _transition_events(changes, now))
    return len(changes)
