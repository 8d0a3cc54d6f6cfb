"""job_events: each job's execution history, and the source of the live stream."""

from __future__ import annotations

import json
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
    """Insert events with one statement (so its trigger sends one NOTIFY batch)."""
    batch = list(events)
    if not batch:
        return
    conn.execute(
        sa.text(
            "INSERT INTO job_events "
            "(job_id, at, level, event, attempt, status, previous_status, message, data) "
            "SELECT e.job_id, e.at, e.level, e.event, e.attempt, e.status, e.previous_status, "
            "  e.message, CAST(e.data AS jsonb) "
            "FROM unnest(CAST(:job_ids AS text[]), CAST(:ats AS timestamptz[]), "
            "  CAST(:levels AS text[]), CAST(:events AS text[]), CAST(:attempts AS int[]), "
            "  CAST(:statuses AS text[]), CAST(:previous AS text[]), CAST(:messages AS text[]), "
            "  CAST(:data AS text[])) WITH ORDINALITY "
            "  AS e(job_id, at, level, event, attempt, status, previous_status, message, data, n) "
            "ORDER BY e.n"
        ),
        {
            "job_ids": [e.job_id for e in batch],
            "ats": [e.at for e in batch],
            "levels": [e.level for e in batch],
            "events": [e.event for e in batch],
            "attempts": [e.attempt for e in batch],
            "statuses": [e.status for e in batch],
            "previous": [e.previous_status for e in batch],
            "messages": [e.message for e in batch],
            "data": [json.dumps(e.data, default=str) for e in batch],
        },
    )


# The columns and values of a job's first event, made from its row (alias `j`): used here
# and by the INSERT that stores jobs without dependencies (repository/jobs.py).
SUBMITTED_EVENT_COLUMNS = (
    "job_id, at, level, event, attempt, status, previous_status, message, data"
)
SUBMITTED_EVENT_VALUES = (
    "j.id, j.created_at, 'info', 'job_' || j.status, 0, j.status, NULL, "
    "'submitted as ' || j.status || coalesce(' (' || j.cancel_reason || ')', ''), "
    "jsonb_build_object('priority', j.priority, 'type', j.type)"
)


def record_submitted(conn: sa.Connection, job_ids: Sequence[str]) -> None:
    """The first event of each just-stored job (`job_<status>`, "submitted as <status>"),
    made from its row by one statement, in the order given: a 10,000-job batch sends its
    ids instead of every field of every event. A join of the ids, not `id = ANY(:ids)`:
    on a table not analyzed yet that was a sequential scan testing every row against
    every id (8 s for 10,000 ids, measured)."""
    if not job_ids:
        return
    conn.execute(
        sa.text(
            f"INSERT INTO job_events ({SUBMITTED_EVENT_COLUMNS}) "
            f"SELECT {SUBMITTED_EVENT_VALUES} "
            "FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS u(id, n) "
            "JOIN jobs j ON j.id = u.id ORDER BY u.n"
        ),
        {"ids": list(job_ids)},
    )


def list_job_events(conn: sa.Connection, job_id: str, limit: int = 1000) -> Sequence[sa.Row[Any]]:
    return conn.execute(
        sa.select(job_events)
        .where(job_events.c.job_id == job_id)
        .order_by(job_events.c.id)
        .limit(limit)
    ).all()
