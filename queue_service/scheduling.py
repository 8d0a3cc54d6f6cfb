"""Admission: the I/O shell around `admission.decide_admission`.

Called after every submission, completion, cancellation, resume and by maintenance.
The decision runs inside PostgreSQL (`taskq_admit`, migration 0002), the SQL twin of the
pure `decide_admission` (property tests hold the two to the same answers): it locks the
pool row, so admissions are serialised across all processes, reads the best-ranked
ready jobs through ix_jobs_admission, and grants a lease per started job that is still
ready. The caller commits, then publishes. `explain_wait` replays the pure decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from queue_service.admission import AdmissionPolicy, decide_admission
from queue_service.model import Admitted, JobStatus, Priority, WaitingReason
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import pool as pool_repo
from queue_service.repository.leases import Lease
from queue_service.settings import Settings


def admit_ready_jobs(
    conn: sa.Connection,
    settings: Settings,
    now: datetime,
    *,
    wait: bool = True,
    released: Sequence[Lease] = (),
) -> list[Admitted]:
    """Give `released` tokens back and grant tokens to the ready jobs the policy starts;
    returns them for publishing after commit.

    One statement (`taskq_admit`): the pool row stays locked only from it to the commit.
    wait=False (submissions) skips admission when another transaction is admitting: the
    busy admitter, the next completion or the maintenance ticker admits the new job, so a
    burst of submissions does not queue up on the pool row.
    """
    rows = pool_repo.admit(
        conn,
        now=now,
        window=settings.admission_window,
        starvation_seconds=settings.starvation_seconds,
        wait=wait,
        released=released,
    )
    return [Admitted(job_id, attempt, Priority(priority)) for job_id, attempt, priority in rows]


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
    candidates = jobs_repo.candidates_ahead(
        conn, job.id, job.rank, job.seq, settings.admission_window
    )
    if not candidates:
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
