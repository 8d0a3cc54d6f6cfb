"""Job rows moved by hand in integration tests, through the transitions PostgreSQL allows."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa


def complete_by_hand(conn: sa.Connection, job_id: str, at: datetime) -> None:
    """A waiting job completed at `at`: pending -> running -> completed, as the status
    trigger requires (it refuses the shortcut). Its lease, if any, is the caller's."""
    conn.execute(
        sa.text(
            "UPDATE jobs SET status = 'running', attempts = 1, started_at = :at, "
            "rank = NULL, pending_since = NULL WHERE id = :id"
        ),
        {"at": at, "id": job_id},
    )
    conn.execute(
        sa.text("UPDATE jobs SET status = 'completed', finished_at = :at WHERE id = :id"),
        {"at": at, "id": job_id},
    )
