"""Periodic maintenance: promote due jobs, admit, republish lost messages, reclaim leases.

Every duty is idempotent and guarded, so running it twice, or from two processes, is
safe; an advisory lock still keeps to one pass at a time to avoid wasted work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dramatiq
import sqlalchemy as sa

from queue_service import metrics, names
from queue_service.db import in_transaction, relaxed_commit
from queue_service.lifecycle import AttemptEnd, finish_attempts, promote_due_jobs
from queue_service.logging import get_logger
from queue_service.model import Admitted, JobStatus, Priority
from queue_service.rabbitmq.messages import dead_letter_body
from queue_service.rabbitmq.publishing import commit_then_publish, publish_dead_letter
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import leases as leases_repo
from queue_service.repository import workers as workers_repo
from queue_service.retry_policy import AttemptResult
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings

log = get_logger(__name__)


@dataclass
class _Pass:
    """The transaction of a maintenance pass: whether it took the lock, what it did."""

    ran: bool
    promoted: int = 0
    admitted: list[Admitted] = field(default_factory=list)


def run_maintenance(engine: sa.Engine, settings: Settings, broker: dramatiq.Broker) -> None:
    """One maintenance pass; skipped when another process is running one."""
    now = datetime.now(UTC)

    def promote_admit_republish(conn: sa.Connection) -> _Pass:
        locked = conn.execute(
            sa.text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": names.MAINTENANCE_LOCK_KEY}
        ).scalar_one()
        if not locked:
            return _Pass(ran=False)
        workers_repo.record_maintenance_pass(conn, now)
        promoted = promote_due_jobs(conn, settings, now)
        admitted = admit_ready_jobs(conn, settings, now)
        stale = leases_repo.touch_unstarted_for_republish(
            conn, now, timedelta(seconds=settings.republish_after_seconds)
        )
        admitted += [Admitted(r.job_id, r.attempt, Priority(r.priority)) for r in stale]
        return _Pass(True, promoted, admitted)

    # Promotions, admissions and republish marks are re-derived if a crash loses them: the
    # commit need not wait for the disk while it holds the pool row.
    first = commit_then_publish(
        engine, broker, lambda conn: promote_admit_republish(relaxed_commit(conn))
    )
    if not first.ran:
        return
    reclaimed = reclaim_expired_leases(engine, settings, broker, now)
    if first.promoted or first.admitted or reclaimed:
        log.info(
            "maintenance_pass",
            promoted=first.promoted,
            admitted=len(first.admitted),
            reclaimed=reclaimed,
        )


def purge_finished_jobs(
    engine: sa.Engine, settings: Settings, now: datetime, batch: int = 5_000, batches: int = 20
) -> int:
    """Retention: delete jobs finished more than `retention_days` ago, in short batches
    (one transaction each) so the sweep never holds many row locks for long."""
    if settings.retention_days <= 0:
        return 0
    cutoff = now - timedelta(days=settings.retention_days)
    deleted = 0
    for _ in range(batches):
        count = in_transaction(
            engine, lambda conn: jobs_repo.delete_finished_before(conn, cutoff, batch)
        )
        deleted += count
        if count < batch:
            break
    if deleted:
        log.info("finished_jobs_purged", deleted=deleted, cutoff=cutoff.isoformat())
    return deleted


def reclaim_expired_leases(
    engine: sa.Engine, settings: Settings, broker: dramatiq.Broker, now: datetime
) -> int:
    """Attempts whose worker died: their lease expired. Count each attempt as lost, in one
    transaction for all of them, and dead-letter the jobs that had no attempt left."""
    with engine.connect() as conn:
        expired = leases_repo.expired_leases(conn, now, settings.lease_ttl_seconds)
    if not expired:
        return 0
    error = "worker lost: lease expired without the attempt finishing"
    ends = [
        AttemptEnd(lease.job_id, lease.attempt, AttemptResult.WORKER_LOST, error)
        for lease in expired
    ]
    finished = commit_then_publish(
        engine,
        broker,
        lambda conn: finish_attempts(conn, settings, ends, now, dead_letter_body),
    )
    for lease in expired:
        log.warning("lease_reclaimed", job_id=lease.job_id, attempt=lease.attempt)
    for (job_id, attempt), outcome in finished.outcomes.items():
        # The lease does not carry the job type: counted under type "unknown".
        metrics.attempt_outcome("unknown", outcome.status, outcome.dead_letter_reason, None)
        if outcome.status is JobStatus.FAILED:
            publish_dead_letter(broker, job_id, attempt, str(outcome.dead_letter_reason), error)
    return len(expired)
