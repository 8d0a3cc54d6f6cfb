"""State changes after submission: finishing attempts, cancelling, replaying, promoting.

Each function runs inside the caller's transaction and returns the attempts admitted
as a consequence; the caller runs it through `rabbitmq.publishing.commit_then_publish`.
Every status change is a move of `transitions`. Every token return goes
through `admit_ready_jobs(released=...)`, the one statement that touches the pool row.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service import errors, transitions
from queue_service.dependency_graph import revivable
from queue_service.model import CANCELLABLE_STATUSES, Admitted, JobStatus, RetryConfig
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import leases as leases_repo
from queue_service.retry_policy import AttemptResult, DeadLetterReason, Outcome, decide_outcome
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings


@dataclass
class Consequences:
    """What a state change set in motion, for the caller to act on after commit."""

    admitted: list[Admitted] = field(default_factory=list)


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt ended, as the worker (or maintenance, for a lost one) reports it."""

    job_id: str
    attempt: int
    result: AttemptResult
    error: str | None = None
    value: Any = None
    traceback: str | None = None
    # When the handler started (a claimed attempt may wait in its process for a thread):
    # the job's started_at. None keeps the claim's time (an attempt given back, or lost).
    started_at: datetime | None = None


@dataclass
class FinishedAttempts:
    """The outcome of each attempt that was still running (the others are absent), and
    what was admitted with the tokens they gave back."""

    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)
    admitted: list[Admitted] = field(default_factory=list)
    releases: list[tuple[str, int | None]] = field(default_factory=list)


def withdraw_unstarted(
    conn: sa.Connection,
    settings: Settings,
    claims: Sequence[tuple[str, int]],
    worker: str,
    now: datetime,
    *,
    claimed_at: datetime | None = None,
    why: str = "shut down before the attempt started",
) -> list[jobs_repo.StatusChange]:
    """Give back attempts `worker` claimed and never started, as if never claimed (see
    `transitions.withdraw_claims`; with `claimed_at`, only the claims made at that time),
    with their events."""
    transitions.record_running(conn, [job_id for job_id, _ in claims])
    changes = transitions.withdraw_claims(
        conn, claims, worker, settings.aging_seconds_per_level, claimed_at
    )
    events_repo.record_events(
        conn, _transition_events(changes, now, message=f"claim withdrawn: {worker} {why}")
    )
    return changes


def _transition_events(
    changes: list[jobs_repo.StatusChange], at: datetime, **kw: Any
) -> list[events_repo.JobEvent]:
    return [
        events_repo.transition(c.job_id, c.attempt, c.previous_status, c.status, at, **kw)
        for c in changes
    ]


def _cascade_cancel(
    conn: sa.Connection, root_id: str, reason: str, now: datetime
) -> list[tuple[str, int | None]]:
    """Cancel every unfinished dependent of `root_id`; returns the leases to release (a
    pending dependent may hold an admitted, unclaimed one)."""
    releases: list[tuple[str, int | None]] = []
    # Repeat until nothing is left: a submission adding a dependent to a descendant commits
    # while the statement waits on that descendant's row lock, so the statement's snapshot
    # misses the new edge; the next statement's snapshot has it.
    while changes := transitions.cancel_descendants(conn, root_id, reason, now):
        events_repo.record_events(
            conn, _transition_events(changes, now, message=f"cancelled: {reason}")
        )
        releases += [(c.job_id, None) for c in changes if c.previous_status == JobStatus.PENDING]
    return releases


def release_and_admit(
    conn: sa.Connection,
    settings: Settings,
    releases: Sequence[tuple[str, int | None]],
    now: datetime,
) -> list[Admitted]:
    """Delete these leases, give their tokens back and admit what they allow: the part of
    ending attempts that touches the pool row (the worker's flush does the same inside
    `taskq_worker_flush`)."""
    released = leases_repo.release_leases(conn, releases)
    return admit_ready_jobs(conn, settings, now, released=released)


def retry_config_of(job: sa.Row[Any]) -> RetryConfig:
    return RetryConfig(
        max_attempts=job.max_attempts,
        backoff_multiplier=job.backoff_multiplier,
        initial_delay_seconds=job.initial_delay_seconds,
        max_delay_seconds=job.max_delay_seconds,
    )


def storable(end: AttemptEnd) -> tuple[AttemptEnd, str | None]:
    """The end as PostgreSQL can store it, with its value serialised.

    A value it cannot store (NaN, infinities, NUL characters, not JSON at all) fails the
    attempt with a clear error instead of failing the whole batch's transaction.
    """
    clean = replace(end, error=_text(end.error), traceback=_text(end.traceback))
    if end.value is None:
        return clean, None
    try:
        serialised = json.dumps(end.value, allow_nan=False)
    except (TypeError, ValueError) as error:
        problem = f"the result is not storable JSON: {error}"
    else:
        if "\\u0000" not in serialised:
            return clean, serialised
        problem = "the result is not storable JSON: it contains a NUL character"
    failed = AttemptEnd(
        end.job_id, end.attempt, AttemptResult.PERMANENT_ERROR, problem, started_at=end.started_at
    )
    return failed, None


def _text(text: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL characters."""
    return None if text is None else text.replace("\x00", "\\0")


def finish_attempts(
    conn: sa.Connection,
    settings: Settings,
    ends: Sequence[AttemptEnd],
    now: datetime,
    dead_letter_message: Callable[[str, int], dict[str, Any]],
    other_events: Sequence[events_repo.JobEvent] = (),
    *,
    release: bool = True,
) -> FinishedAttempts:
    """Record the end of many attempts: outcomes, dependents, dead letters, tokens and the
    admission those tokens allow, in a handful of statements for the whole batch.
    `other_events` (the batch's claims) are written with the outcomes, in one INSERT.
    With release=False the leases to release are returned (`releases`) for the caller to
    release later in the same transaction (the worker's flush passes them to
    `taskq_worker_flush`).

    Guarded by (job_id, status running, attempt): finishing an attempt twice, or one that
    maintenance already reclaimed, changes nothing but a leftover lease.
    """
    finished = FinishedAttempts()
    transitions.record_running(conn, [e.job_id for e in ends])
    running = jobs_repo.lock_running(conn, [(e.job_id, e.attempt) for e in ends])
    rows: list[transitions.RecordedOutcome] = []
    events: list[events_repo.JobEvent] = list(other_events)
    completed: list[str] = []
    dead: list[tuple[str, str, AttemptEnd, Outcome]] = []
    cancelled: list[str] = []
    for reported in ends:
        job = running.get(reported.job_id)
        if job is None:
            continue
        end, result_json = storable(reported)
        jitter = random.uniform(0, settings.retry_jitter_ratio)
        outcome = decide_outcome(
            end.result,
            end.attempt,
            retry_config_of(job),
            now,
            jitter,
            job.cancel_requested_at is not None,
        )
        finished.outcomes[(end.job_id, end.attempt)] = outcome
        is_cancel = outcome.status is JobStatus.CANCELLED
        rows.append(
            transitions.RecordedOutcome(
                job_id=end.job_id,
                status=outcome.status.value,
                next_attempt_at=outcome.next_attempt_at,
                last_error=end.error,
                cancel_reason="cancelled_by_request" if is_cancel else None,
                result_json=result_json,
                extra_attempt=outcome.extra_attempt,
                started_at=end.started_at,
            )
        )
        events.append(_outcome_event(end, outcome, now))
        if outcome.status is JobStatus.COMPLETED:
            completed.append(end.job_id)
        elif outcome.status is JobStatus.FAILED:
            dead.append((end.job_id, job.type, end, outcome))
        elif is_cancel:
            cancelled.append(end.job_id)
    _recover_own_dead_letters(conn, ends, running, now, finished)
    transitions.record_outcomes(conn, rows, now)
    # Dependents before the pool row: the pool is always the last lock taken.
    ready = transitions.unblock_dependents(conn, completed, now, settings.aging_seconds_per_level)
    events += _transition_events(ready, now, message="dependencies completed")
    events_repo.record_events(conn, events)
    releases: list[tuple[str, int | None]] = []
    for job_id, job_type, end, outcome in dead:
        releases += _cascade_cancel(conn, job_id, f"upstream_failed:{job_id}", now)
        dead_letters_repo.record_dead_letter(
            conn,
            job_id=job_id,
            type_=job_type,
            reason=outcome.dead_letter_reason or "failed",
            attempts=end.attempt,
            last_error=end.error,
            message=dead_letter_message(job_id, end.attempt),
            now=now,
        )
    for job_id in cancelled:
        releases += _cascade_cancel(conn, job_id, f"upstream_cancelled:{job_id}", now)
    releases += [(e.job_id, e.attempt) for e in ends]
    if release:
        finished.admitted = release_and_admit(conn, settings, releases, now)
    else:
        finished.releases = releases
    return finished


def _recover_own_dead_letters(
    conn: sa.Connection,
    ends: Sequence[AttemptEnd],
    running: Mapping[str, Any],
    now: datetime,
    finished: FinishedAttempts,
) -> None:
    """The final failures among the ends that are no longer running which this very
    batch recorded: a worker's flush run again after its commit answer was lost (db
    `_retried`, with the same `now`: AttemptWriter._flush_time gives each flush its own).
    Their outcome is FAILED as the first run decided, so the worker dead-letters their
    messages through the exchange rather than acknowledging them."""
    gone = [(e.job_id, e.attempt) for e in ends if e.job_id not in running]
    for key, reason in dead_letters_repo.died_at(conn, gone, now).items():
        finished.outcomes[key] = Outcome(JobStatus.FAILED, dead_letter_reason=_reason(reason))


def _reason(recorded: str) -> DeadLetterReason | None:
    try:
        return DeadLetterReason(recorded)
    except ValueError:  # a reason of an older version
        return None


def _outcome_event(end: AttemptEnd, outcome: Outcome, now: datetime) -> events_repo.JobEvent:
    detail: dict[str, Any] = {"result": end.result.value, "error": end.error}
    if end.traceback:
        detail["traceback"] = end.traceback
    if outcome.next_attempt_at is not None:
        detail["next_attempt_at"] = outcome.next_attempt_at.isoformat()
    return events_repo.transition(
        end.job_id,
        end.attempt,
        JobStatus.RUNNING.value,
        outcome.status.value,
        now,
        message=f"attempt {end.attempt} {end.result.value}"
        + (f": {end.error}" if end.error else ""),
        level="info" if end.result is AttemptResult.SUCCEEDED else "warning",
        data=detail,
    )


def cancel_job(conn: sa.Connection, settings: Settings, job_id: str, now: datetime) -> Consequences:
    """Cancel a waiting job now, or ask the worker running it to stop (202 for the API)."""
    # The row, then (in a later statement, so an admission that held the row has committed
    # and its lease is seen) the lease: a claim in flight, which starts the lease without
    # locking the row, commits first (the job is then running) or finds the lease gone.
    jobs_repo.lock_job(conn, job_id)
    leases_repo.lock_lease(conn, job_id)
    transitions.record_running(conn, [job_id])
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
    change = transitions.cancel_waiting_job(conn, job_id, "cancelled_by_request", now)
    if change is None:
        raise errors.NotCancellable(f"job {job_id!r} changed status; try again")
    events_repo.record_events(
        conn, _transition_events([change], now, message="cancelled by request")
    )
    releases = _cascade_cancel(conn, job_id, f"upstream_cancelled:{job_id}", now)
    releases.append((job_id, None))
    return Consequences(admitted=release_and_admit(conn, settings, releases, now))


def replay_dead_letter(
    conn: sa.Connection, settings: Settings, dead_letter_id: int, now: datetime
) -> Consequences:
    """Run a dead-lettered job again with a fresh attempt budget."""
    letter = dead_letters_repo.get(conn, dead_letter_id)
    if letter is None:
        raise errors.DeadLetterNotFound(f"dead letter {dead_letter_id} not found")
    if letter.resolved_at is not None:
        raise errors.NotReplayable(f"dead letter {dead_letter_id} was already {letter.resolution}")
    change = transitions.requeue_failed(conn, letter.job_id, now, settings.aging_seconds_per_level)
    if change is None:
        raise errors.NotReplayable(f"job {letter.job_id!r} is no longer failed")
    dead_letters_repo.resolve(conn, dead_letter_id, "replayed", now)
    # Dependents come back only when every dead ancestor is back in play.
    downstream = jobs_repo.cancelled_downstream(conn, letter.job_id)
    restored = transitions.restore_cancelled(conn, revivable(downstream, letter.job_id))
    events_repo.record_events(
        conn,
        _transition_events([change], now, message=f"replayed from dead letter {dead_letter_id}")
        + _transition_events(restored, now, message=f"{letter.job_id} replayed"),
    )
    return Consequences(admitted=admit_ready_jobs(conn, settings, now))


def promote_due_jobs(conn: sa.Connection, settings: Settings, now: datetime) -> int:
    changes = transitions.promote_due(conn, now, settings.aging_seconds_per_level, limit=1000)
    events_repo.record_events(conn, _transition_events(changes, now))
    return len(changes)
