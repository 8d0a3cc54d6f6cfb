"""One transaction for a batch of a worker process's claims and attempt ends.

A worker process funnels every claim and every finished attempt of its threads through
one writer (actors/writer.py), which calls `apply_batch` once per flush: the claims are one
guarded UPDATE, the ends a handful of statements and the job events one INSERT, whatever
the batch's size. The caller commits (durably), then releases the ended attempts' leases
and admits in a second transaction (`lifecycle.release_and_admit`), then publishes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.lifecycle import AttemptEnd, finish_attempts
from queue_service.model import JobStatus
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository.jobs import ClaimedAttempt
from queue_service.retry_policy import Outcome
from queue_service.settings import Settings


@dataclass(frozen=True)
class ClaimRequest:
    job_id: str
    attempt: int
    redelivered: bool = False


@dataclass
class BatchResult:
    claimed: dict[tuple[str, int], ClaimedAttempt] = field(default_factory=dict)
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)
    # Leases of the ended attempts (and of pending dependents cancelled with them), for
    # `lifecycle.release_and_admit` in the writer's second, pool-row transaction.
    releases: list[tuple[str, int | None]] = field(default_factory=list)


def apply_batch(
    conn: sa.Connection,
    settings: Settings,
    worker: str,
    claims: Sequence[ClaimRequest],
    ends: Sequence[AttemptEnd],
    now: datetime,
    dead_letter_message: Callable[[str, int], dict[str, Any]],
) -> BatchResult:
    """Claim `claims` for `worker` and record `ends`, in the caller's transaction."""
    result = BatchResult()
    claimed = jobs_repo.claim_attempts(
        conn,
        [(c.job_id, c.attempt) for c in claims],
        worker,
        settings.lease_ttl_seconds,
        now,
    )
    result.claimed = {(c.job_id, c.attempt): c for c in claimed}
    redelivered = {(c.job_id, c.attempt): c.redelivered for c in claims}
    claim_events = [
        events_repo.transition(
            c.job_id,
            c.attempt,
            JobStatus.PENDING.value,
            JobStatus.RUNNING.value,
            now,
            message=f"attempt {c.attempt} started on {worker}",
            data={"worker": worker, "redelivered": redelivered[(c.job_id, c.attempt)]},
        )
        for c in claimed
    ]
    if not ends:
        events_repo.record_events(conn, claim_events)
        return result
    finished = finish_attempts(
        conn, settings, ends, now, dead_letter_message, claim_events, release=False
    )
    result.outcomes = finished.outcomes
    result.releases = finished.releases
    return result
