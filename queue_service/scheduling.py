"""Admission: the I/O shell around `admission.decide_admission`.

Called after every submission, completion, cancellation, resume and by maintenance.
It locks the pool row (so admissions are serialised across all processes), reads the
best-ranked ready jobs through ix_jobs_admission, lets the pure decision pick, and
records a lease per started job that is still ready. The caller commits, then publishes.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from queue_service.admission import AdmissionPolicy, PoolState, decide_admission
from queue_service.model import JobStatus, WaitingReason
from queue_service.publisher import Admitted
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import leases as leases_repo
from queue_service.repository import pool as pool_repo
from queue_service.settings import Settings


def admit_ready_jobs(
    conn: sa.Connection,
    settings: Settings,
    now: datetime,
    *,
    wait: bool = True,
    locked_pool: PoolState | None = None,
) -> list[Admitted]:
    """Grant tokens to the ready jobs the policy starts; returns them for publishing.

    wait=False (submissions) skips admission when another transaction is admitting: the
    busy admitter, the next completion or the maintenance ticker admits the new job, so a
    burst of submissions does not queue up on the pool row. `locked_pool` is the state
    of a pool row this transaction already locked (by returning tokens).
    """
    pool = locked_pool or pool_repo.lock_pool(conn, wait=wait)
    if pool is None or pool.paused or pool.cpu_free <= 0 or pool.memory_free <= 0:
        return []
    ready = jobs_repo.ready_candidates(conn, admission_look_ahead(pool, settings))
    if not ready:
        return []
    attempts_so_far = {candidate.job_id: attempts for candidate, attempts in ready}
    decision = decide_admission(
        [candidate for candidate, _ in ready], pool, now, AdmissionPolicy.from_settings(settings)
    )
    if not decision.started:
        return []
    # The guarded UPDATE locks each chosen row: a job cancelled meanwhile drops out here
    # and gets no lease (its tokens stay free for the next admission).
    still_ready = jobs_repo.mark_queued(conn, [c.job_id for c in decision.started], now)
    started = [c for c in decision.started if c.job_id in still_ready]
    if not started:
        return []
    grants = [
        leases_repo.Lease(c.job_id, attempts_so_far[c.job_id] + 1, c.cpu_units, c.memory_mb)
        for c in started
    ]
    leases_repo.grant_leases(conn, grants, now)
    pool_repo.take_tokens(conn, sum(g.cpu_units for g in grants), sum(g.memory_mb for g in grants))
    events_repo.record_events(
        conn,
        [
            events_repo.JobEvent(
                job_id=g.job_id,
                event="tokens_granted",
                attempt=g.attempt,
                message=f"admitted with {g.cpu_units} CPU units and {g.memory_mb} MB",
                at=now,
                data={"cpu_units": g.cpu_units, "memory_mb": g.memory_mb},
            )
            for g in grants
        ],
    )
    return [Admitted(c.job_id, attempts_so_far[c.job_id] + 1, c.priority) for c in decision.started]


def admission_look_ahead(pool: PoolState, settings: Settings) -> int:
    """How many ready jobs one admission step reads: enough to backfill every free CPU
    unit several times over, at most TASKQ_ADMISSION_WINDOW. Most admissions follow one
    completion that freed a unit or two, so reading the whole window each time would
    spend the worker's CPU on candidates that cannot start."""
    return min(settings.admission_window, max(16, 4 * pool.cpu_free))


def explain_wait(conn: sa.Connection, settings: Settings, job: sa.Row, now: datetime) -> str | None:
    """Why a job is not running yet, in SPEC's `waiting_reason` vocabulary.

    For a ready job it replays the admission decision over the jobs ranked ahead of it,
    so the answer is the one admission itself would give.
    """
    status = JobStatus(job.status)
    if status is JobStatus.BLOCKED:
        return WaitingReason.DEPENDENCIES.value
    if status is JobStatus.SCHEDULED:
        return WaitingReason.SCHEDULED.value
    if status is JobStatus.RETRYING:
        return WaitingReason.BACKOFF.value
    if status is not JobStatus.PENDING:
        return None
    if job.queued_at is not None:
        return WaitingReason.NO_WORKER.value  # holds its tokens; no worker has taken it yet
    pool = pool_repo.read_pool(conn)
    if pool.paused:
        return WaitingReason.PAUSED.value
    candidates = jobs_repo.candidates_ahead(conn, job.rank, job.seq, settings.admission_window)
    if not candidates or candidates[-1].job_id != job.id:
        # Further back than one admission step looks: it waits for the ones ahead.
        return (
            WaitingReason.INSUFFICIENT_CPU.value
            if pool.cpu_free < job.cpu_units
            else WaitingReason.INSUFFICIENT_MEMORY.value
            if pool.memory_free < job.memory_mb
            else WaitingReason.NO_WORKER.value
        )
    decision = decide_admission(candidates, pool, now, AdmissionPolicy.from_settings(settings))
    return decision.waiting.get(job.id, WaitingReason.NO_WORKER.value)
