"""job_events: each job's execution history, and the source of the live stream."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.tables import job_events


@dataclass(frozen=True)
class JobEvent:
    job_id: str
    event: str
    attempt: int
    message: str
    at: datetime
    level: str = "info"
    status: str | None = None
    previous_status: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def transition(
    job_id: str,
    attempt: int,
    previous_status: str | None,
    status: str,
    at: datetime,
    *,
    message: str = "",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """The event that records a status change (it reaches the stream through NOTIFY)."""
    text = message or f"{previous_status or 'new'} -> {status}"
    return JobEvent(
        job_id=job_id,
        event=f"job_{status}",
        attempt=attempt,
        message=text,
        at=at,
        level=level,
        status=status,
        previous_status=previous_status,
        data=data or {},
    )


def record_events(conn: sa.Connection, events: Iterable[JobEvent]) -> None:
    """Insert events in one statement (executemany)."""
    rows = [
        {
            "job_id": e.job_id,
            "at": e.at,
            "level": e.level,
            "event": e.event,
            "attempt": e.attempt,
            "status": e.status,
            "previous_status": e.previous_status,
            "message": e.message,
            "data": e.data,
        }
        for e in events
    ]
    if rows:
        conn.execute(sa.insert(job_events), rows)


def list_job_events(conn: sa.Connection, job_id: str, limit: int = 1000) -> Sequence[sa.Row[Any]]:
    return conn.execute(
        sa.select(job_events)
        .where(job_events.c.job_id == job_id)
        .order_by(job_events.c.id)
        .limit(limit)
    ).all()
