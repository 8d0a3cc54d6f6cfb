"""One flush of a worker process's claims and attempt ends: one statement in the common case.

A worker process funnels every claim and every finished attempt of its threads through
one writer (actors/writer.py), which calls `apply_flush` once per flush. The claims, the
succeeded attempts, their dependents, the events of all of them, the token return and
admission are one call of `taskq_worker_flush` (migration 0004). Attempts that did not
succeed go through `lifecycle.finish_attempts` first, in the same transaction: their
retry decision, dead letters and cascades stay in Python, and they are rare.

`split_ends` tells the caller whether the flush is that one statement (no `others`: it can
run in autocommit, one round trip and one durable commit) or needs a transaction around it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.db import execute_in_driver
from queue_service.lifecycle import AttemptEnd, finish_attempts, storable
from queue_service.model import Admitted, JobStatus, Priority
from queue_service.repository.jobs import ClaimedAttempt
from queue_service.retry_policy import AttemptResult, Outcome
from queue_service.settings import Settings

_COMPLETED = Outcome(JobStatus.COMPLETED)

# Run at the driver level (`execute_in_driver`): psycopg placeholders. The flush's items
# go as one JSON parameter (migration 0013): the driver converts list parameters element
# by element in Python, and that was the largest cost of a flush in the worker.
_FLUSH = (
    "SELECT kind, job_id, attempt, job_type, payload, timeout_seconds, priority, created_at, "
    "  pending_since FROM taskq_worker_flush("
    "  %(now)s::timestamptz, %(worker)s, %(ttl)s, %(aging)s, %(window)s, %(starvation)s, "
    "  %(items)s::jsonb)"
)


@dataclass(frozen=True)
class ClaimRequest:
    job_id: str
    attempt: int
    redelivered: bool = False


@dataclass
class FlushResult:
    claimed: dict[tuple[str, int], ClaimedAttempt] = field(default_factory=dict)
    # The outcome of each ended attempt that was still running (the others are absent).
    outcomes: dict[tuple[str, int], Outcome] = field(default_factory=dict)
    # What the returned tokens admitted, best ranked first: publish after the commit.
    admitted: list[Admitted] = field(default_factory=list)


@dataclass(frozen=True)
class SplitEnds:
    # Succeeded attempts with their results serialised: recorded by the flush function.
    succeeded: list[tuple[AttemptEnd, str | None]]
    # Every other end: the Python path (retry decision, dead letters, cascades).
    others: list[AttemptEnd]


def split_ends(ends: Sequence[AttemptEnd]) -> SplitEnds:
    split = SplitEnds([], [])
    for end in ends:
        stored = _stored_success(end)
        if stored is None:
            split.others.append(end)
        else:
            split.succeeded.append(stored)
    return split


def apply_flush(
    conn: sa.Connection,
    settings: Settings,
    worker: str,
    claims: Sequence[ClaimRequest],
    ends: SplitEnds,
    now: datetime,
    dead_letter_message: Callable[[str, int], dict[str, Any]],
) -> FlushResult:
    """Claim `claims` for `worker` and record `ends`; returns what to answer and publish."""
    result = FlushResult()
    succeeded = ends.succeeded
    releases: list[tuple[str, int | None]] = []
    if ends.others:
        finished = finish_attempts(
            conn, settings, ends.others, now, dead_letter_message, release=False
        )
        result.outcomes.update(finished.outcomes)
        releases = finished.releases
    items = {
        "claim_jobs": [c.job_id for c in claims],
        "claim_attempts": [c.attempt for c in claims],
        "claim_redelivered": [c.redelivered for c in claims],
        "done_jobs": [end.job_id for end, _ in succeeded],
        "done_attempts": [end.attempt for end, _ in succeeded],
        "done_results": [result_json for _, result_json in succeeded],
        "done_started": [_iso(end.started_at) for end, _ in succeeded],
        "release_jobs": [job_id for job_id, _ in releases],
        "release_attempts": [attempt for _, attempt in releases],
    }
    rows = execute_in_driver(
        conn,
        _FLUSH,
        {
            "now": now,
            "worker": worker,
            "ttl": settings.lease_ttl_seconds,
            "aging": settings.aging_seconds_per_level,
            "window": settings.admission_window,
            "starvation": settings.starvation_seconds,
            "items": json.dumps(items, separators=(",", ":")),
        },
    )
    for kind, job_id, attempt, job_type, payload, timeout, priority, created, pending in rows:
        if kind == "claimed":
            result.claimed[(job_id, attempt)] = ClaimedAttempt(
                job_id=job_id,
                attempt=attempt,
                type=job_type,
                payload=payload,
                timeout_seconds=timeout,
                priority=priority,
                created_at=created,
                pending_since=pending,
            )
        elif kind == "completed":
            result.outcomes[(job_id, attempt)] = _COMPLETED
        else:
            result.admitted.append(Admitted(job_id, attempt, Priority(priority)))
    return result


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _stored_success(end: AttemptEnd) -> tuple[AttemptEnd, str | None] | None:
    """A succeeded end with its result serialised; None for any other end (including a
    success whose result cannot be stored: it fails the attempt, on the Python path)."""
    if end.result is not AttemptResult.SUCCEEDED:
        return None
    clean, result_json = storable(end)
    return (clean, result_json) if clean.result is AttemptResult.SUCCEEDED else None
