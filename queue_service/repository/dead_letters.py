"""dead_letters: PostgreSQL's record of every dead-lettered message.

RabbitMQ's dead-letter queue holds the messages themselves (with x-death headers); the
body of a dead message is the last one published, so the reason and the final error
are recorded here, in the same transaction that fails the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.tables import dead_letters

Row = sa.Row[Any]


def record_dead_letter(
    conn: sa.Connection,
    *,
    job_id: str,
    type_: str,
    reason: str,
    attempts: int,
    last_error: str | None,
    message: dict[str, Any],
    now: datetime,
) -> int:
    return int(
        conn.execute(
            sa.insert(dead_letters)
            .values(
                job_id=job_id,
                type=type_,
                reason=reason,
                attempts=attempts,
                last_error=last_error,
                message=message,
                died_at=now,
            )
            .returning(dead_letters.c.id)
        ).scalar_one()
    )


def died_at(
    conn: sa.Connection, attempts: Sequence[tuple[str, int]], at: datetime
) -> dict[tuple[str, int], str]:
    """The reason of each of `attempts` that was dead-lettered at exactly `at`
    (ix_dead_letters_job)."""
    if not attempts:
        return {}
    wanted = set(attempts)
    rows = conn.execute(
        sa.select(dead_letters.c.job_id, dead_letters.c.attempts, dead_letters.c.reason).where(
            dead_letters.c.job_id.in_(sorted({job_id for job_id, _ in attempts})),
            dead_letters.c.died_at == at,
        )
    )
    return {(r.job_id, r.attempts): r.reason for r in rows if (r.job_id, r.attempts) in wanted}


def list_open(conn: sa.Connection, *, after_id: int | None, limit: int) -> Sequence[Row]:
    """Unresolved dead letters, newest first (ix_dead_letters_open)."""
    query = sa.select(dead_letters).where(dead_letters.c.resolved_at.is_(None))
    if after_id is not None:
        query = query.where(dead_letters.c.id < after_id)
    return conn.execute(query.order_by(dead_letters.c.id.desc()).limit(limit)).all()


@dataclass(frozen=True)
class OpenLetter:
    job_id: str
    attempts: int
    reason: str
    last_error: str | None


def open_before(conn: sa.Connection, died_before: datetime, limit: int) -> list[OpenLetter]:
    """Unresolved dead letters that died before `died_before`, oldest first
    (ix_dead_letters_open, in id order, which is the order they died in)."""
    rows = conn.execute(
        sa.select(
            dead_letters.c.job_id,
            dead_letters.c.attempts,
            dead_letters.c.reason,
            dead_letters.c.last_error,
        )
        .where(dead_letters.c.resolved_at.is_(None), dead_letters.c.died_at < died_before)
        .order_by(dead_letters.c.id)
        .limit(limit)
    ).all()
    return [OpenLetter(*row) for row in rows]


def get(conn: sa.Connection, dead_letter_id: int) -> Row | None:
    return conn.execute(sa.select(dead_letters).where(dead_letters.c.id == dead_letter_id)).first()


def resolve(conn: sa.Connection, dead_letter_id: int, resolution: str, now: datetime) -> Row | None:
    """Mark an open dead letter replayed or discarded; None when it is not open."""
    return conn.execute(
        sa.update(dead_letters)
        .where(dead_letters.c.id == dead_letter_id, dead_letters.c.resolved_at.is_(None))
        .values(resolved_at=now, resolution=resolution)
        .returning(dead_letters)
    ).first()


def count_open(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).where(dead_letters.c.resolved_at.is_(None))
        ).scalar_one()
    )
