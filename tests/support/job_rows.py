"""Job rows moved by hand in integration tests, through the transitions PostgreSQL allows,
and dead letters recorded for them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from queue_service.repository import dead_letters as dead_letters_repo


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


def dead_letter_by_hand(
    conn: sa.Connection, job_id: str, died_at: datetime, attempts: int = 1
) -> int:
    """An open dead letter of a no-op job whose retries ran out; its id."""
    return dead_letters_repo.record_dead_letter(
        conn,
        job_id=job_id,
        type_="noop",
        reason="retries_exhausted",
        attempts=attempts,
        last_error="boom",
        message={},
        now=died_at,
    )
