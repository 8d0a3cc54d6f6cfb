"""Accepting jobs: validation against the registry, the pool and the graph; idempotent insert.

Shape checks (types, ranges, sizes) happen in the API schemas; this module checks what
needs the product's state, builds the rows and stores a submission in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from queue_service import errors
from queue_service.admission import AdmissionPolicy, admission_rank
from queue_service.dependency_graph import topological_order, validate_batch
from queue_service.job_types import check_payload, get_job_type
from queue_service.model import Admitted, Priority, Resources, RetryConfig
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.scheduling import admit_ready_jobs
from queue_service.settings import Settings

# Every pair of Crockford base-32 digits (the ULID alphabet), by its 10-bit value.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS = [first + second for first in _CROCKFORD for second in _CROCKFORD]
_PAIR_SHIFTS = range(120, -1, -10)


def new_job_id() -> str:
    """`job_` + 26 characters: a ULID (48-bit millisecond time, 80 random bits)."""
    return _job_id((int(time.time() * 1000) << 80) | secrets.randbits(80))


def new_job_ids(count: int) -> list[str]:
    """`count` new job ids, as `new_job_id` makes them, with one read of the system's
    randomness for all of them (a batch's 10,000 reads cost more than the rest)."""
    millis = int(time.time() * 1000) << 80
    random = os.urandom(10 * count)
    return [
        _job_id(millis | int.from_bytes(random[10 * i : 10 * i + 10], "big")) for i in range(count)
    ]


def _job_id(value: int) -> str:
    # 26 digits of 5 bits, two at a time, from the top (the first digit holds 3 bits).
    return "job_" + "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


# json.dumps(..., sort_keys=True, separators=(",", ":"), default=str), built once.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode


@dataclass(frozen=True)
class JobSpec:
    """One normalised submission (defaults applied)."""

    type: str = "noop"
    job_id: str | None = None
    priority: Priority = Priority.NORMAL
    payload: dict[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    depends_on: tuple[str, ...] = ()
    retry: RetryConfig = field(default_factory=RetryConfig)
    timeout_seconds: float = 300.0
    run_at: datetime | None = None
    idempotency_key: str | None = None

    def request_hash(self) -> str:
        """Fingerprint of everything but the id: a resubmission must match it exactly."""
        body = {
            "type": self.type,
            "priority": self.priority.value,
            "payload": self.payload,
            # Written out rather than `dataclasses.asdict` (the hot cost of a 10,000-job
            # batch); the same dicts, so hashes stored earlier still match.
            "resources": {
                "cpu_units": self.resources.cpu_units,
                "memory_mb": self.resources.memory_mb,
            },
            "depends_on": list(self.depends_on),
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "backoff_multiplier": self.retry.backoff_multiplier,
                "initial_delay_seconds": self.retry.initial_delay_seconds,
                "max_delay_seconds": self.retry.max_delay_seconds,
            },
            "timeout_seconds": self.timeout_seconds,
            "run_at": self.run_at.isoformat() if self.run_at else None,
        }
        return hashlib.sha256(_CANONICAL_JSON(body).encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: sa.Row[Any]
    created: bool


def check_against_product(spec: JobSpec, settings: Settings) -> None:
    """What shape validation cannot know: registered types and the pool's capacity."""
    if get_job_type(spec.type) is None:
        raise errors.UnknownJobType(
            f"unknown job type {spec.type!r}; see GET /job-types", {"type": spec.type}
        )
    check_payload(spec.type, spec.payload)  # the type's payload model, if it has one
    over = {}
    if spec.resources.cpu_units > settings.pool_cpu_units:
        over["cpu_units"] = {
            "requested": spec.resources.cpu_units,
            "capacity": settings.pool_cpu_units,
        }
    if spec.resources.memory_mb > settings.pool_memory_mb:
        over["memory_mb"] = {
            "requested": spec.resources.memory_mb,
            "capacity": settings.pool_memory_mb,
        }
    if over:
        raise errors.ExceedsCapacity(
            "the job needs more than the whole token pool: it could never run", over
        )


def _initial_state(
    spec: JobSpec,
    dep_statuses: Mapping[str, str],
    now: datetime,
    policy: AdmissionPolicy,
    inherited_reasons: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Status and scheduling columns of a new job, given its dependencies' statuses.

    A dependency listed twice counts once (it is stored as one edge). A dead dependency
    found in `inherited_reasons` (a job of the same batch cancelled on submission) passes
    its own cancel reason on, as the cascade from a failure names its root.
    """
    depends_on = list(dict.fromkeys(spec.depends_on))
    dead = [d for d in depends_on if dep_statuses.get(d) in ("failed", "cancelled")]
    remaining = sum(1 for d in depends_on if dep_statuses.get(d) != "completed")
    state: dict[str, Any] = {
        "remaining_deps": remaining,
        "rank": None,
        "pending_since": None,
        "next_attempt_at": None,
        "finished_at": None,
        "cancel_reason": None,
    }
    if dead:
        kind = "failed" if dep_statuses[dead[0]] == "failed" else "cancelled"
        reason = (inherited_reasons or {}).get(dead[0]) or f"upstream_{kind}:{dead[0]}"
        state.update(status="cancelled", finished_at=now, cancel_reason=reason)
    elif remaining:
        state["status"] = "blocked"
    elif spec.run_at is not None and spec.run_at > now:
        state.update(status="scheduled", next_attempt_at=spec.run_at)
    else:
        state.update(
            status="pending", pending_since=now, rank=admission_rank(spec.priority, now, policy)
        )
    return state


def _row(spec: JobSpec, job_id: str, state: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "id": job_id,
        "type": spec.type,
        "priority": spec.priority.value,
        "payload": spec.payload,
        "cpu_units": spec.resources.cpu_units,
        "memory_mb": spec.resources.memory_mb,
        "max_attempts": spec.retry.max_attempts,
        "backoff_multiplier": spec.retry.backoff_multiplier,
        "initial_delay_seconds": spec.retry.initial_delay_seconds,
        "max_delay_seconds": spec.retry.max_delay_seconds,
        "timeout_seconds": spec.timeout_seconds,
        "run_at": spec.run_at,
        "idempotency_key": spec.idempotency_key,
        "request_hash": spec.request_hash(),
        "created_at": now,
        **state,
    }


def submit_jobs(
    conn: sa.Connection,
    settings: Settings,
    specs: Sequence[JobSpec],
    now: datetime,
    ahead_cap: int | None = None,
) -> tuple[list[Submitted | errors.TaskQueueError], jobs_repo.RankedAhead | None]:
    """Store independent submissions in one transaction (the api's group commit): each
    gets its own answer (stored, the original of a repeat, or why it was refused). The
    caller admits once for all of them, after the commit (`admit_ready_jobs`).

    Jobs without dependencies (the common case) are stored with their events by one
    statement for all of them; a job with dependencies goes through `submit_job`.

    Every spec must carry its job id already (`with_job_id`): ids are drawn outside any
    transaction that may be run again, so a retry after a lost commit answer finds the
    job it stored instead of storing it twice.

    With `ahead_cap`, the walk that places the stored ready jobs in the queue comes back
    too, taken in the insert's round trip (`jobs_repo.insert_new_jobs`), or None.
    """
    answers: list[Submitted | errors.TaskQueueError | None] = [None] * len(specs)
    policy = AdmissionPolicy.from_settings(settings)
    plain: list[tuple[int, dict[str, Any]]] = []  # (index, row) of jobs without dependencies
    for index, spec in enumerate(specs):
        assert spec.job_id is not None, "give every spec its id first (with_job_id)"
        try:
            if spec.depends_on:
                answers[index], _ = submit_job(conn, settings, spec, now, admit=False)
            else:
                check_against_product(spec, settings)
                plain.append(
                    (index, _row(spec, spec.job_id, _initial_state(spec, {}, now, policy), now))
                )
        except errors.TaskQueueError as error:  # refused before writing anything
            answers[index] = error
    # The rows and their submitted events, in one statement.
    stored, ranked = jobs_repo.insert_new_jobs(conn, [row for _, row in plain], ahead_cap)
    # A row is stored for the first spec carrying its id; a later one with the same id is
    # a repeat of it.
    created: dict[str, int] = {}
    for index, row in plain:
        if row["id"] in stored and row["id"] not in created:
            created[row["id"]] = index
    for index, row in plain:
        if created.get(row["id"]) == index:
            answers[index] = Submitted(stored[row["id"]], created=True)
            continue
        # Its id or key was taken (by an earlier job, or one earlier in this group).
        try:
            answers[index] = _repeat(conn, specs[index])
        except errors.TaskQueueError as error:
            answers[index] = error
    return [answer for answer in answers if answer is not None], ranked


def with_job_id(spec: JobSpec) -> JobSpec:
    """The spec with its job id: the client's, or a new one."""
    return spec if spec.job_id is not None else replace(spec, job_id=new_job_id())


def submit_job(
    conn: sa.Connection, settings: Settings, spec: JobSpec, now: datetime, *, admit: bool = True
) -> tuple[Submitted, list[Admitted]]:
    """Store one job, or return the original when this is a repeated submission."""
    check_against_product(spec, settings)
    if spec.job_id is not None and spec.job_id in spec.depends_on:
        raise errors.DependencyCycle(
            f"dependency cycle: {spec.job_id} -> {spec.job_id}", {"cycle": [spec.job_id] * 2}
        )
    dep_statuses = jobs_repo.lock_statuses_for_dependency(conn, sorted(set(spec.depends_on)))
    missing = [d for d in spec.depends_on if d not in dep_statuses]
    if missing:
        # A repeated submission must not fail on this check before it finds its original.
        original = _original(conn, spec)
        if original is not None:
            return Submitted(original, created=False), []
        raise errors.UnknownDependency(
            f"unknown dependencies: {', '.join(missing)}", {"unknown": missing}
        )
    job_id = spec.job_id or new_job_id()
    policy = AdmissionPolicy.from_settings(settings)
    row = _row(spec, job_id, _initial_state(spec, dep_statuses, now, policy), now)
    job = jobs_repo.insert_job_if_new(conn, row)
    if job is None:
        return _repeat(conn, spec), []
    jobs_repo.insert_dependencies(conn, [(job_id, d) for d in dict.fromkeys(spec.depends_on)])
    events_repo.record_submitted(conn, [job_id])
    admitted = (
        admit_ready_jobs(conn, settings, now, wait=False)
        if admit and row["status"] == "pending"
        else []
    )
    if admitted:  # admission may have granted this job its tokens: show its queued_at
        job = jobs_repo.get_job(conn, job_id)
        assert job is not None
    return Submitted(job, created=True), admitted


def _repeat(conn: sa.Connection, spec: JobSpec) -> Submitted:
    """A spec whose id or key was taken at insert time: the original it repeats, or a
    conflict (a different body, or the conflicting row vanished meanwhile)."""
    original = _original(conn, spec)
    if original is None:
        raise errors.IdempotencyConflict("a job with this id or key is being changed")
    return Submitted(original, created=False)


def _original(conn: sa.Connection, spec: JobSpec) -> sa.Row[Any] | None:
    """The job a repeated submission refers to; a different body is a conflict."""
    existing = jobs_repo.find_by_id_or_key(conn, spec.job_id, spec.idempotency_key)
    if existing is None:
        return None
    if existing.request_hash != spec.request_hash():
        what = "job_id" if spec.job_id == existing.id else "idempotency key"
        raise errors.IdempotencyConflict(
            f"a different job was already submitted with this {what}",
            {"job_id": existing.id},
        )
    return existing


def original_batch(conn: sa.Connection, specs: Sequence[JobSpec]) -> list[dict[str, Any]] | None:
    """The stored jobs of a batch sent again (a client's retry after a lost answer), in the
    batch's order; None when the batch is not such a repeat.

    A repeat names every job by a job id the client chose, each once, and every one of
    them is stored; a stored job whose submission differs from the one sent again is a
    conflict (as for POST /jobs), naming those jobs.
    """
    ids = [spec.job_id for spec in specs if spec.job_id is not None]
    if len(ids) != len(specs) or len(set(ids)) != len(ids):
        return None
    stored = jobs_repo.submitted_jobs(conn, ids)
    if len(stored) != len(ids):
        return None
    differing = sorted(
        job_id
        for job_id, spec in zip(ids, specs, strict=True)
        if stored[job_id].request_hash != spec.request_hash()
    )
    if differing:
        raise errors.IdempotencyConflict(
            "different jobs were already submitted with these job ids",
            {"job_ids": differing[:20]},
        )
    return [
        {"id": row.id, "status": row.status, "created_at": row.created_at, "priority": row.priority}
        for row in (stored[job_id] for job_id in ids)
    ]


def submit_batch(
    conn: sa.Connection,
    settings: Settings,
    specs: Sequence[JobSpec],
    now: datetime,
    *,
    admit: bool = True,
    drawn_ids: Collection[str] = frozenset(),
) -> tuple[list[dict[str, Any]], list[Admitted]]:
    """Store a whole batch atomically: validated as one graph, bulk-inserted (COPY).

    Returns the stored rows in the batch's order. Give the specs their ids first
    (`with_job_id`) when the transaction may be run again. `drawn_ids` are ids the caller
    drew itself (`new_job_ids`): no stored job can hold one, so only the others are
    looked up for a duplicate.
    """
    for spec in specs:
        check_against_product(spec, settings)
    ids = [spec.job_id or new_job_id() for spec in specs]
    batch_ids = set(ids)
    external = sorted({d for spec in specs for d in spec.depends_on if d not in batch_ids})
    dep_statuses = jobs_repo.lock_statuses_for_dependency(conn, external)
    validate_batch(
        [(i, s.depends_on) for i, s in zip(ids, specs, strict=True)], dep_statuses.keys()
    )
    taken = jobs_repo.existing_ids(conn, [i for i in ids if i not in drawn_ids])
    if taken:
        raise errors.DuplicateJobId(
            f"job ids already exist: {', '.join(sorted(taken)[:20])}", {"job_ids": sorted(taken)}
        )
    policy = AdmissionPolicy.from_settings(settings)
    # Dependencies first, so a job cancelled on submission (a dead stored dependency)
    # cancels its dependents in the batch too; other batch jobs are unfinished.
    by_id = dict(zip(ids, specs, strict=True))
    statuses = dict(dep_statuses)
    reasons: dict[str, str] = {}
    states: dict[str, dict[str, Any]] = {}
    graph = {i: s.depends_on for i, s in by_id.items()}
    # Without edges the order is the batch's own (as topological_order would give it).
    for job_id in topological_order(graph) if any(graph.values()) else list(graph):
        state = _initial_state(by_id[job_id], statuses, now, policy, reasons)
        states[job_id] = state
        statuses[job_id] = "cancelled" if state["status"] == "cancelled" else "blocked"
        if state["cancel_reason"]:
            reasons[job_id] = state["cancel_reason"]
    rows = [_row(spec, job_id, states[job_id], now) for job_id, spec in by_id.items()]
    jobs_repo.insert_jobs(conn, rows)
    jobs_repo.insert_dependencies(
        conn,
        [
            (i, d)
            for i, spec in zip(ids, specs, strict=True)
            for d in dict.fromkeys(spec.depends_on)
        ],
    )
    events_repo.record_submitted(conn, ids)
    ready = admit and any(r["status"] == "pending" for r in rows)
    admitted = admit_ready_jobs(conn, settings, now) if ready else []
    return rows, admitted
