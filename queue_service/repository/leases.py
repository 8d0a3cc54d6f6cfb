"""leases: which admitted or running attempt holds which tokens, until when."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from queue_service.tables import leases


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int
    cpu_units: int
    memory_mb: int


def grant_leases(conn: sa.Connection, grants: Sequence[Lease], now: datetime) -> None:
    if not grants:
        return
    conn.execute(
        sa.insert(leases),
        [
            {
                "job_id": g.job_id,
                "attempt": g.attempt,
                "cpu_units": g.cpu_units,
                "memory_mb": g.memory_mb,
                "granted_at": now,
                "published_at": now,
            }
            for g in grants
        ],
    )


def start_lease(
    conn: sa.Connection, job_id: str, attempt: int, expires_at: datetime, worker: str, now: datetime
) -> bool:
    """The worker's claim: the lease now expires if the worker stops renewing it by dying."""
    result = conn.execute(
        sa.text(
            "UPDATE leases SET started_at = :now, expires_at = :expires, worker = :worker "
            "WHERE job_id = :job_id AND attempt = :attempt AND started_at IS NULL"
        ),
        {"now": now, "expires": expires_at, "worker": worker, "job_id": job_id, "attempt": attempt},
    )
    return result.rowcount == 1


def holds_lease(conn: sa.Connection, job_id: str, attempt: int) -> bool:
    return (
        conn.execute(
            sa.text("SELECT 1 FROM leases WHERE job_id = :job_id AND attempt = :attempt"),
            {"job_id": job_id, "attempt": attempt},
        ).first()
        is not None
    )


def release_lease(conn: sa.Connection, job_id: str, attempt: int | None = None) -> Lease | None:
    """Delete the job's lease (of `attempt`, if given) and return what it held."""
    guard = "" if attempt is None else " AND attempt = :attempt"
    row = conn.execute(
        sa.text(
            f"DELETE FROM leases WHERE job_id = :job_id{guard} "
            "RETURNING job_id, attempt, cpu_units, memory_mb"
        ),
        {"job_id": job_id, "attempt": attempt},
    ).first()
    if row is None:
        return None
    return Lease(row.job_id, row.attempt, row.cpu_units, row.memory_mb)


def expired_leases(conn: sa.Connection, now: datetime, limit: int = 100) -> list[Lease]:
    rows = conn.execute(
        sa.text(
            "SELECT job_id, attempt, cpu_units, memory_mb FROM leases "
            "WHERE expires_at < :now ORDER BY expires_at LIMIT :limit"
        ),
        {"now": now, "limit": limit},
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
