"""The progress handlers report (job_events rows of event `job_progress`)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from queue_service.tables import job_events

PROGRESS_EVENT = "job_progress"


def latest_progress(conn: sa.Connection, job_id: str) -> sa.Row[Any] | None:
    """The job's latest progress report (`at`, `data` {fraction, message}), or None."""
    return conn.execute(
        sa.select(job_events)
        .where(job_events.c.job_id == job_id, job_events.c.event == PROGRESS_EVENT)
        .order_by(job_events.c.id.desc())
        .limit(1)
    ).first()
