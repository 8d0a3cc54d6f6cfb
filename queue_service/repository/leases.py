"""leases: which admitted or running attempt holds which tokens, until when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from queue_service.model import Admitted, Priority
from queue_service.tables import leases


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int
    cpu_units: int
    memory_mb: int


def release_leases(conn: sa.Connection, attempts: Sequence[tuple[str, int | None]]) -> list[Lease]:
    """Delete the leases of these (job, attempt) pairs (attempt None: whatever attempt the
    job's lease is for) and return what they held, to be given back to the pool."""
    if not attempts:
        return []
    rows = conn.execute(
        sa.text(
            "DELETE FROM leases l USING unnest(CAST(:ids AS text[]), CAST(:attempts AS int[])) "
            "  AS r(job_id, attempt) "
            "WHERE l.job_id = r.job_id AND (r.attempt IS NULL OR l.attempt = r.attempt) "
            "RETURNING l.job_id, l.attempt, l.cpu_units, l.memory_mb"
        ),
        {"ids": [job_id for job_id, _ in attempts], "attempts": [a for _, a in attempts]},
    ).all()
    return [Lease(r.job_id, r.attempt, r.cpu_units, r.memory_mb) for r in rows]


def granted_unstarted(conn: sa.Connection, at: datetime) -> list[Admitted]:
    """The attempts admitted at exactly `at` whose lease no claim has started, best ranked
    first: what a flush run again after its commit answer was lost admitted the first time
    (rare: a scan of the live leases)."""
    rows = conn.execute(
        sa.text(
            "SELECT l.job_id, l.attempt, j.priority FROM leases l JOIN jobs j ON j.id = l.job_id "
            "WHERE l.granted_at = :at AND l.started_at IS NULL ORDER BY j.rank, j.seq"
        ),
        {"at": at},
    ).all()
    return [Admitted(r.job_id, r.attempt, Priority(r.priority)) for r in rows]


def lock_lease(conn: sa.Connection, job_id: str) -> None:
    """Lock the job's lease, if it has one, until the end of the transaction."""
    conn.execute(sa.text("SELECT 1 FROM leases WHERE job_id = :id FOR UPDATE"), {"id": job_id})


def on_lease_alone(job: str = "j", lease: str = "l") -> str:
    """SQL: the job (alias `job`) runs its lease's attempt (alias `lease`) on the lease
    alone: the claim started the lease and left the row pending on the attempt before
    (migration 0016). The one definition of a running job whose row says pending."""
    return (
        f"({lease}.started_at IS NOT NULL AND {job}.status = 'pending' "
        f"AND {job}.attempts = {lease}.attempt - 1)"
    )


# The lease's attempt is the job's running attempt: on the lease alone, or written onto the
# row (`transitions.record_running`).
RUNS_ITS_ATTEMPT = f"({on_lease_alone()} OR j.status = 'running' AND j.attempts = l.attempt)"


def renew_leases(conn: sa.Connection, worker: str, ttl_seconds: float, now: datetime) -> int:
    """The heartbeat of a worker process: its running attempts' leases live on. A HOT
    update of a few narrow rows (expires_at is in no index). A lease whose attempt has
    ended but whose release was lost (a crash between the outcome's commit and the token
    return) is not renewed: it expires and maintenance releases it."""
    result = conn.execute(
        sa.text(
            "UPDATE leases l SET expires_at = :now + :ttl * interval '1 second' "
            "FROM jobs j WHERE l.worker = :worker AND l.started_at IS NOT NULL "
            f"AND j.id = l.job_id AND {RUNS_ITS_ATTEMPT}"
        ),
        {"now": now, "ttl": ttl_seconds, "worker": worker},
    )
    return int(result.rowcount)


def started_by(conn: sa.Connection, worker: str) -> list[tuple[str, int]]:
    """(job_id, attempt) of the attempts `worker` (one process) claimed and has not ended."""
    rows = conn.execute(
        sa.text(
            "SELECT job_id, attempt FROM leases WHERE worker = :worker AND started_at IS NOT NULL"
        ),
        {"worker": worker},
    ).all()
    return [(r.job_id, r.attempt) for r in rows]


def expired_leases(
    conn: sa.Connection, now: datetime, ttl_seconds: float, limit: int = 100
) -> list[Lease]:
    """Started leases whose worker stopped renewing them.

    None while PostgreSQL itself has been up for less than one TTL: the heartbeats of
    live workers failed during its restart too, and they renew within a heartbeat.
    """
    rows = conn.execute(
        sa.text(
            "SELECT job_id, attempt, cpu_units, memory_mb FROM leases "
            "WHERE expires_at < :now "
            "AND CAST(:now AS timestamptz) > pg_postmaster_start_time() "
            "  + :ttl * interval '1 second' "
            "ORDER BY expires_at LIMIT :limit"
        ),
        {"now": now, "ttl": ttl_seconds, "limit": limit},
    ).all()
    return [Lease(r.job_id, r.attempt, r.cpu_units, r.memory_mb) for r in rows]


def touch_unstarted_for_republish(
    conn: sa.Connection, now: datetime, older_than: timedelta, limit: int = 100
) -> Sequence[sa.Row[Any]]:
    """Admitted attempts no worker has claimed for a while: their message may be lost.

    Marks them published now and returns (job_id, attempt, priority) to publish again.
    """
    return conn.execute(
        sa.text(
            "UPDATE leases l SET published_at = :now FROM jobs j "
            "WHERE j.id = l.job_id AND l.job_id IN ("
            "  SELECT job_id FROM leases WHERE started_at IS NULL AND published_at < :cutoff "
            "  ORDER BY published_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "RETURNING l.job_id, l.attempt, j.priority"
        ),
        {"now": now, "cutoff": now - older_than, "limit": limit},
    ).all()


def usage_from_leases(conn: sa.Connection) -> tuple[int, int]:
    row = conn.execute(
        sa.text("SELECT coalesce(sum(cpu_units), 0), coalesce(sum(memory_mb), 0) FROM leases")
    ).one()
    return int(row[0]), int(row[1])


def list_leases(conn: sa.Connection) -> Sequence[sa.Row[Any]]:
    return conn.execute(sa.select(leases).order_by(leases.c.granted_at)).all()
