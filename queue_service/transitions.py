"""The state mover: every status change a Python caller makes goes through this module.

Each move names the statuses it takes a job from and the statuses it may leave it in,
and is checked against `model.ALLOWED_TRANSITIONS` when it is built (at import): an
illegal move raises `IllegalTransition` before any SQL runs. Each function below is one
guarded, set-based UPDATE whose `WHERE status IN (...)` guard and target literals are
rendered from its move, so the SQL cannot drift from the declared move. No row back means
another process moved the job first.

PostgreSQL checks every status change as well, those of the PL/pgSQL worker flush and
admission included: a trigger (migration 0008) refuses any pair outside the same table.
The initial status of a new job (blocked, scheduled or pending) is set by submission's
INSERT, which is not a transition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service.model import CANCELLABLE_STATUSES, JobStatus, can_transition
from queue_service.repository.jobs import (
    DESCENDANTS_OF_ROOT,
    RANK_AT_NOW,
    ClaimedAttempt,
    StatusChange,
    rank_at,
    status_changes,
)


class IllegalTransition(ValueError):
    """A move the state machine does not allow: a bug in the code that declared it."""


def _literal(status: JobStatus) -> str:
    return f"'{status.value}'"


@dataclass(frozen=True)
class Move:
    """One kind of status change: from any of `sources` to one of `targets`."""

    name: str
    sources: frozenset[JobStatus]
    targets: frozenset[JobStatus]

    def __post_init__(self) -> None:
        illegal = sorted(
            f"{source}->{target}"
            for source in self.sources
            for target in self.targets
            if not can_transition(source, target)
        )
        if illegal or not self.sources or not self.targets:
            raise IllegalTransition(f"move {self.name!r} is not allowed: {illegal or 'empty'}")

    def guard(self, column: str = "j.status") -> str:
        """The WHERE guard on the current status."""
        return f"{column} IN ({', '.join(_literal(s) for s in sorted(self.sources))})"

    def source(self) -> str:
        """The single source status as an SQL literal."""
        (only,) = self.sources
        return _literal(only)

    def target(self, status: JobStatus | None = None) -> str:
        """A target status as an SQL literal (the only one when `status` is omitted)."""
        if status is None:
            (status,) = self.targets
        self.check(status)
        return _literal(status)

    def check(self, target: JobStatus) -> None:
        if target not in self.targets:
            raise IllegalTransition(f"move {self.name!r} cannot end in {target}")


def _move(name: str, sources: Iterable[JobStatus], targets: Iterable[JobStatus]) -> Move:
    return Move(name, frozenset(sources), frozenset(targets))


S = JobStatus
CLAIM = _move("claim", {S.PENDING}, {S.RUNNING})
FINISH = _move("finish_attempt", {S.RUNNING}, {S.COMPLETED, S.RETRYING, S.FAILED, S.CANCELLED})
UNBLOCK = _move("unblock", {S.BLOCKED}, {S.SCHEDULED, S.PENDING})
PROMOTE = _move("promote", {S.SCHEDULED, S.RETRYING}, {S.PENDING})
CANCEL = _move("cancel", CANCELLABLE_STATUSES, {S.CANCELLED})
REPLAY = _move("replay", {S.FAILED}, {S.PENDING})
REVIVE = _move("revive", {S.CANCELLED}, {S.BLOCKED})
WITHDRAW = _move("withdraw_claim", {S.RUNNING}, {S.PENDING})

# Every move the product makes; a test checks together they cover ALLOWED_TRANSITIONS.
MOVES = (CLAIM, FINISH, UNBLOCK, PROMOTE, CANCEL, REPLAY, REVIVE, WITHDRAW)


# The (job, attempt) pairs a statement works on, from `_pairs(...)`'s :ids and :attempts.
_WANTED = (
    "wanted AS (SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:attempts AS int[])) "
    "  AS w(job_id, attempt))"
)


def _pairs(pairs: Sequence[tuple[str, int]]) -> dict[str, list[Any]]:
    return {"ids": [job_id for job_id, _ in pairs], "attempts": [n for _, n in pairs]}


def claim_attempts(
    conn: sa.Connection,
    requests: Sequence[tuple[str, int]],
    worker: str,
    lease_ttl_seconds: float,
    now: datetime,
) -> list[ClaimedAttempt]:
    """pending -> running for exactly these (job, attempt) pairs, each holding an unstarted
    lease; returns the ones this call claimed (a redelivery, a double publish or a racing
    worker finds no row). One statement for the whole batch, as the worker's flush claims
    (migration 0016): the claim starts the lease and leaves the job row as it is; the job
    is running while its lease is started, and the row is written at the attempt's end
    (or by `record_running`).

    The lease's guard (`started_at IS NULL`) is re-checked after a concurrent claim
    commits, so two workers racing for one attempt get one row.
    """
    if not requests:
        return []
    rows = conn.execute(
        sa.text(
            f"WITH {_WANTED} "
            "UPDATE leases l SET started_at = :now, worker = :worker, "
            "  expires_at = :now + :ttl * interval '1 second' "
            "FROM wanted w, jobs j "
            "WHERE l.job_id = w.job_id AND l.attempt = w.attempt AND l.started_at IS NULL "
            f"  AND j.id = w.job_id AND {CLAIM.guard()} AND j.attempts = w.attempt - 1 "
            "RETURNING j.id, l.attempt AS attempts, j.type, j.payload, j.timeout_seconds, "
            "  j.priority, j.created_at, l.granted_at AS pending_since"
        ),
        {
            **_pairs(requests),
            "now": now,
            "worker": worker,
            "ttl": lease_ttl_seconds,
        },
    ).all()
    return [
        ClaimedAttempt(
            job_id=r.id,
            attempt=r.attempts,
            type=r.type,
            payload=r.payload,
            timeout_seconds=r.timeout_seconds,
            priority=r.priority,
            created_at=r.created_at,
            pending_since=r.pending_since,
        )
        for r in rows
    ]


def record_running(conn: sa.Connection, job_ids: Sequence[str]) -> None:
    """Write the claim's half onto the rows of these jobs whose attempt runs on its lease
    alone: pending -> running with the lease's attempt number, start and grant time.

    A claim starts only the lease (migration 0016), so the row of a running job may still
    say pending. A Python path that changes a running job (ends its attempt, asks it to
    stop, withdraws its claim) calls this first and then finds the row `running`. Rows and
    leases are locked in id order. No event: the claim recorded `job_running`.
    """
    if not job_ids:
        return
    conn.execute(
        sa.text(
            "WITH targets AS (SELECT j.id, l.attempt, l.started_at, l.granted_at FROM jobs j "
            "  JOIN leases l ON l.job_id = j.id AND l.started_at IS NOT NULL "
            f"  WHERE j.id = ANY(:ids) AND {CLAIM.guard()} AND j.attempts = l.attempt - 1 "
            "  ORDER BY j.id FOR UPDATE OF j, l) "
            f"UPDATE jobs j SET status = {CLAIM.target()}, attempts = t.attempt, "
            "  started_at = t.started_at, queued_at = t.granted_at, rank = NULL, "
            "  pending_since = NULL "
            "FROM targets t WHERE j.id = t.id"
        ),
        {"ids": sorted(set(job_ids))},
    )


@dataclass(frozen=True)
class RecordedOutcome:
    """One row of `record_outcomes`: a running job's next state."""

    job_id: str
    status: str
    next_attempt_at: datetime | None
    last_error: str | None
    cancel_reason: str | None
    result_json: str | None  # already serialised (json.dumps, allow_nan=False)
    extra_attempt: bool = False  # an interrupted attempt given back: max_attempts + 1
    started_at: datetime | None = None  # the handler's start; None keeps the claim's time


def record_outcomes(
    conn: sa.Connection, outcomes: Sequence[RecordedOutcome], now: datetime
) -> None:
    """running -> completed / retrying / failed / cancelled, one statement for the batch."""
    if not outcomes:
        return
    for outcome in outcomes:  # before any SQL: an illegal target is a bug, not a state
        FINISH.check(JobStatus(outcome.status))
    conn.execute(
        sa.text(
            "UPDATE jobs j SET status = o.status, next_attempt_at = o.next_attempt_at, "
            "  finished_at = CASE WHEN o.status IN ('completed', 'failed', 'cancelled') "
            "    THEN CAST(:now AS timestamptz) END, "
            "  last_error = coalesce(o.last_error, j.last_error), "
            "  cancel_reason = o.cancel_reason, result = CAST(o.result AS jsonb), "
            "  max_attempts = j.max_attempts + CASE WHEN o.extra THEN 1 ELSE 0 END, "
            "  started_at = coalesce(o.started_at, j.started_at) "
            "FROM unnest(CAST(:ids AS text[]), CAST(:statuses AS text[]), "
            "  CAST(:next AS timestamptz[]), CAST(:errors AS text[]), "
            "  CAST(:reasons AS text[]), CAST(:results AS text[]), CAST(:extra AS boolean[]), "
            "  CAST(:started AS timestamptz[])) "
            "  AS o(id, status, next_attempt_at, last_error, cancel_reason, result, extra, "
            "       started_at) "
            f"WHERE j.id = o.id AND {FINISH.guard()}"
        ),
        {
            "now": now,
            "ids": [o.job_id for o in outcomes],
            "statuses": [o.status for o in outcomes],
            "next": [o.next_attempt_at for o in outcomes],
            "errors": [o.last_error for o in outcomes],
            "reasons": [o.cancel_reason for o in outcomes],
            "results": [o.result_json for o in outcomes],
            "extra": [o.extra_attempt for o in outcomes],
            "started": [o.started_at for o in outcomes],
        },
    )


def unblock_dependents(
    conn: sa.Connection, completed_ids: Sequence[str], now: datetime, aging: float
) -> list[StatusChange]:
    """Decrement the dependents of completed jobs; those reaching zero become ready.

    A dependent of several of them loses one per completed parent. Rows are locked in id
    order so two completions sharing dependents cannot deadlock; the row lock serialises
    concurrent decrements, so none is lost and exactly one completion sees zero.
    """
    if not completed_ids:
        return []
    rows = conn.execute(
        sa.text(
            "WITH done AS (SELECT d.job_id, count(*) AS n FROM job_dependencies d "
            "  WHERE d.depends_on = ANY(:ids) GROUP BY d.job_id), "
            "targets AS (SELECT j.id, j.status, done.n FROM jobs j JOIN done ON done.job_id = j.id "
            f"  WHERE {UNBLOCK.guard()} ORDER BY j.id FOR UPDATE OF j) "
            "UPDATE jobs j SET remaining_deps = j.remaining_deps - t.n, "
            "  status = CASE WHEN j.remaining_deps > t.n THEN j.status "
            f"    WHEN j.run_at > :now THEN {UNBLOCK.target(JobStatus.SCHEDULED)} "
            f"    ELSE {UNBLOCK.target(JobStatus.PENDING)} END, "
            "  next_attempt_at = CASE WHEN j.remaining_deps = t.n AND j.run_at > :now "
            "    THEN j.run_at END, "
            "  pending_since = CASE WHEN j.remaining_deps = t.n "
            "    AND NOT coalesce(j.run_at > :now, false) "
            "    THEN CAST(:now AS timestamptz) END, "
            f"  rank = CASE WHEN j.remaining_deps = t.n AND NOT coalesce(j.run_at > :now, false) "
            f"    THEN {RANK_AT_NOW} END "
            "FROM targets t WHERE j.id = t.id "
            "RETURNING j.id, j.attempts, t.status AS previous_status, j.status"
        ),
        {"ids": list(completed_ids), "now": now, "aging": aging},
    ).all()
    return [c for c in status_changes(rows) if c.status != c.previous_status]


def withdraw_claims(
    conn: sa.Connection,
    claims: Sequence[tuple[str, int]],
    worker: str,
    aging_seconds_per_level: float,
    claimed_at: datetime | None = None,
) -> list[StatusChange]:
    """running -> pending for attempts `worker` claimed and never started (a worker that
    shuts down hands its prefetched messages back to RabbitMQ): the attempt number and the
    unstarted lease come back, so the redelivered message's claim succeeds elsewhere. The
    rank and ready time are the lease's grant (the job keeps its place: it is admitted).
    With `claimed_at`, only leases that claim started (one flush of the worker's)."""
    if not claims:
        return []
    rows = conn.execute(
        sa.text(
            f"WITH {_WANTED}, "
            "targets AS (SELECT j.id, w.attempt, l.granted_at FROM jobs j "
            "  JOIN wanted w ON w.job_id = j.id "
            "  JOIN leases l ON l.job_id = j.id AND l.attempt = w.attempt "
            "    AND l.worker = :worker AND l.started_at IS NOT NULL "
            "    AND (CAST(:claimed_at AS timestamptz) IS NULL OR l.started_at = :claimed_at) "
            f"  WHERE {WITHDRAW.guard()} AND j.attempts = w.attempt "
            "  ORDER BY j.id FOR UPDATE OF j), "
            f"back AS (UPDATE jobs j SET status = {WITHDRAW.target()}, "
            "  attempts = t.attempt - 1, started_at = NULL, queued_at = NULL, "
            "  pending_since = t.granted_at, "
            f"  rank = {rank_at('t.granted_at')} "
            "  FROM targets t WHERE j.id = t.id "
            f"  RETURNING j.id, t.attempt AS attempts, {WITHDRAW.source()} AS previous_status, "
            "    j.status), "
            "unstarted AS (UPDATE leases l SET started_at = NULL, expires_at = NULL, "
            "  worker = NULL FROM back b WHERE l.job_id = b.id AND l.attempt = b.attempts) "
            "SELECT * FROM back"
        ),
        {
            **_pairs(claims),
            "worker": worker,
            "aging": aging_seconds_per_level,
            "claimed_at": claimed_at,
        },
    ).all()
    return status_changes(rows)


def cancel_descendants(
    conn: sa.Connection, root_id: str, reason: str, now: datetime
) -> list[StatusChange]:
    """Cancel every unfinished transitive dependent of `root_id` with `reason`."""
    rows = conn.execute(
        sa.text(
            f"{DESCENDANTS_OF_ROOT}, "
            "targets AS (SELECT j.id, j.status FROM jobs j JOIN descendants USING (id) "
            f"  WHERE {CANCEL.guard()} "
            "  ORDER BY j.id FOR UPDATE OF j) "
            f"UPDATE jobs j SET status = {CANCEL.target()}, cancel_reason = :reason, "
            "  finished_at = :now, "
            "  next_attempt_at = NULL, rank = NULL, pending_since = NULL, queued_at = NULL "
            "FROM targets WHERE j.id = targets.id "
            "RETURNING j.id, j.attempts, targets.status AS previous_status, j.status"
        ),
        {"root": root_id, "reason": reason, "now": now},
    ).all()
    return status_changes(rows)


def restore_cancelled(conn: sa.Connection, job_ids: Sequence[str]) -> list[StatusChange]:
    """cancelled -> blocked for dependents whose ancestors are back in play (replay)."""
    if not job_ids:
        return []
    rows = conn.execute(
        sa.text(
            f"UPDATE jobs j SET status = {REVIVE.target()}, cancel_reason = NULL, "
            "  finished_at = NULL, "
            "  remaining_deps = (SELECT count(*) FROM job_dependencies d JOIN jobs p "
            "    ON p.id = d.depends_on WHERE d.job_id = j.id AND p.status <> 'completed') "
            f"WHERE j.id = ANY(:ids) AND {REVIVE.guard()} "
            f"RETURNING j.id, j.attempts, {REVIVE.source()} AS previous_status, j.status"
        ),
        {"ids": list(job_ids)},
    ).all()
    return status_changes(rows)


def cancel_waiting_job(
    conn: sa.Connection, job_id: str, reason: str, now: datetime
) -> StatusChange | None:
    """blocked/scheduled/pending/retrying -> cancelled, in one guarded statement."""
    row = conn.execute(
        sa.text(
            "WITH target AS (SELECT id, status FROM jobs WHERE id = :id "
            f"  AND {CANCEL.guard('status')} FOR UPDATE) "
            f"UPDATE jobs j SET status = {CANCEL.target()}, cancel_reason = :reason, "
            "  finished_at = :now, "
            "  cancel_requested_at = :now, next_attempt_at = NULL, rank = NULL, "
            "  pending_since = NULL, queued_at = NULL "
            "FROM target WHERE j.id = target.id "
            "RETURNING j.id, j.attempts, target.status AS previous_status, j.status"
        ),
        {"id": job_id, "reason": reason, "now": now},
    ).first()
    return None if row is None else status_changes([row])[0]


def promote_due(conn: sa.Connection, now: datetime, aging: float, limit: int) -> list[StatusChange]:
    """scheduled/retrying jobs whose time has come become ready (ix_jobs_due)."""
    rows = conn.execute(
        sa.text(
            "WITH due AS (SELECT id, status FROM jobs "
            f"  WHERE {PROMOTE.guard('status')} AND next_attempt_at <= :now "
            "  ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED) "
            f"UPDATE jobs j SET status = {PROMOTE.target()}, next_attempt_at = NULL, "
            "  queued_at = NULL, "
            f"  pending_since = :now, rank = {RANK_AT_NOW} "
            "FROM due WHERE j.id = due.id "
            "RETURNING j.id, j.attempts, due.status AS previous_status, j.status"
        ),
        {"now": now, "aging": aging, "limit": limit},
    ).all()
    return status_changes(rows)


def requeue_failed(
    conn: sa.Connection, job_id: str, now: datetime, aging: float
) -> StatusChange | None:
    """failed -> pending with a fresh attempt budget (dead-letter replay)."""
    row = conn.execute(
        sa.text(
            f"UPDATE jobs SET status = {REPLAY.target()}, attempts = 0, finished_at = NULL, "
            "  queued_at = NULL, next_attempt_at = NULL, cancel_requested_at = NULL, "
            f"  pending_since = :now, rank = {RANK_AT_NOW} "
            f"WHERE id = :id AND {REPLAY.guard('status')} "
            f"RETURNING id, attempts, {REPLAY.source()} AS previous_status, status"
        ),
        {"id": job_id, "now": now, "aging": aging},
    ).first()
    return None if row is None else status_changes([row])[0]
