"""jobs and job_dependencies: inserts, reads, locks and the non-status writes.

Status changes are not here: every one is a guarded statement of `queue_service.transitions`,
checked against the allowed transitions.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from queue_service.admission import Candidate
from queue_service.db import driver_connection
from queue_service.model import Priority
from queue_service.repository.events import SUBMITTED_EVENT_COLUMNS, SUBMITTED_EVENT_VALUES
from queue_service.repository.leases import on_lease_alone
from queue_service.tables import jobs, leases, metadata

Row = sa.Row[Any]
_PG_DIALECT = psycopg_dialect()

# The admission rank of a job becoming pending at :now (admission.admission_rank, in SQL).
_LEVEL = "CASE priority " + " ".join(f"WHEN '{p.value}' THEN {p.level}" for p in Priority) + " END"


def rank_at(ready_at: str) -> str:
    """The rank of a job that became ready at the SQL timestamp `ready_at` (:aging bound)."""
    return f"extract(epoch FROM {ready_at}) - ({_LEVEL}) * :aging"


RANK_AT_NOW = rank_at("CAST(:now AS timestamptz)")


# A ready job not yet admitted: admission's lease is the only mark of an admitted job.
_NO_LEASE = "NOT EXISTS (SELECT 1 FROM leases l WHERE l.job_id = j.id)"

# Every transitive dependent of :root (walks ix_job_dependencies_depends_on).
DESCENDANTS_OF_ROOT = (
    "WITH RECURSIVE descendants(id) AS ("
    "  SELECT job_id FROM job_dependencies WHERE depends_on = :root "
    "  UNION SELECT d.job_id FROM job_dependencies d "
    "  JOIN descendants ON d.depends_on = descendants.id)"
)


@dataclass(frozen=True)
class StatusChange:
    job_id: str
    attempt: int
    previous_status: str
    status: str


def status_changes(rows: Sequence[Row]) -> list[StatusChange]:
    return [StatusChange(r.id, r.attempts, r.previous_status, r.status) for r in rows]


# --- submission -----------------------------------------------------------------------


def insert_job_if_new(conn: sa.Connection, row: Mapping[str, Any]) -> Row | None:
    """Insert one job unless its id or idempotency key exists already; the stored row, or
    None when it existed."""
    result = conn.execute(pg_insert(jobs).values(**row).on_conflict_do_nothing().returning(jobs))
    return result.first()


# The columns of a submitted job without dependencies, in the order of the arrays below.
_NEW_JOB_COLUMNS = (
    ("id", "text"),
    ("type", "text"),
    ("priority", "text"),
    ("payload", "text"),  # JSON text, cast to jsonb in the statement
    ("cpu_units", "int"),
    ("memory_mb", "int"),
    ("max_attempts", "int"),
    ("backoff_multiplier", "float8"),
    ("initial_delay_seconds", "float8"),
    ("max_delay_seconds", "float8"),
    ("timeout_seconds", "float8"),
    ("run_at", "timestamptz"),
    ("idempotency_key", "text"),
    ("request_hash", "text"),
    ("status", "text"),
    ("rank", "float8"),
    ("pending_since", "timestamptz"),
    ("next_attempt_at", "timestamptz"),
    ("created_at", "timestamptz"),
)
# The jobs and their first events (as events.record_submitted writes them) in one
# statement: the events are made from the rows the INSERT returns, in `seq` order.
_INSERT_NEW_JOBS = (
    "WITH stored AS (INSERT INTO jobs (" + ", ".join(name for name, _ in _NEW_JOB_COLUMNS) + ") "
    "SELECT "
    + ", ".join(
        f"CAST(u.{name} AS jsonb)" if name == "payload" else f"u.{name}"
        for name, _ in _NEW_JOB_COLUMNS
    )
    + " FROM unnest("
    + ", ".join(f"CAST(%({name})s AS {kind}[])" for name, kind in _NEW_JOB_COLUMNS)
    + ") WITH ORDINALITY AS u("
    + ", ".join(name for name, _ in _NEW_JOB_COLUMNS)
    + ", n) ORDER BY u.n "
    "ON CONFLICT DO NOTHING "
    "RETURNING id, seq, status, priority, type, created_at, rank, queued_at, cancel_reason), "
    f"events AS (INSERT INTO job_events ({SUBMITTED_EVENT_COLUMNS}) "
    f"SELECT {SUBMITTED_EVENT_VALUES} FROM stored j ORDER BY j.seq) "
    "SELECT id, seq, status, priority, created_at, rank, queued_at FROM stored"
)


def insert_new_jobs(
    conn: sa.Connection, rows: Sequence[Mapping[str, Any]], ahead_cap: int | None = None
) -> tuple[dict[str, Any], RankedAhead | None]:
    """Insert jobs without dependencies and their submitted events (`job_<status>`, as
    `events.record_submitted` makes them) in one statement, in the given order so that
    `seq` and the event ids follow it, skipping those whose id or idempotency key exists
    already (or repeats one of an earlier row). Returns the stored ones by id: rows with
    (id, seq, status, priority, created_at, rank, queued_at).

    With `ahead_cap`, and a ready job among the rows, it also returns the walk that places
    them in the queue (`positions_in_queue`), bounded past the highest rank among them
    (their `seq` is not known before the insert; `RankedAhead.places` needs only the bound
    to cover each key).

    Run on the driver's connection as prepared statements, with the transaction's BEGIN
    in the same round trip: this is the hot path of `POST /jobs`."""
    if not rows:
        return {}, None
    params: dict[str, list[Any]] = {name: [] for name, _ in _NEW_JOB_COLUMNS}
    for row in rows:
        for name, _ in _NEW_JOB_COLUMNS:
            value = row[name]
            params[name].append(json.dumps(value) if name == "payload" else value)
    ready_ranks = [row["rank"] for row in rows if row["status"] == "pending"]
    walk_cap = ahead_cap if ready_ranks else None
    bound = (max(ready_ranks, default=0.0), _LAST_SEQ)
    ranked: RankedAhead | None = None
    with (
        driver_connection(conn, _INSERT_NEW_JOBS) as raw,
        raw.pipeline(),
        raw.cursor(row_factory=namedtuple_row) as cursor,
        raw.cursor() as walk,
    ):
        cursor.execute(_INSERT_NEW_JOBS, params, prepare=True)
        if walk_cap is not None:
            _send_ranked_ahead(walk, bound, walk_cap)  # after the insert: it sees the rows
        stored: list[Any] = cursor.fetchall()
        if walk_cap is not None:
            ranked = _read_ranked_ahead(walk, bound)
    return {r.id: r for r in stored}, ranked


def insert_jobs(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Bulk insert with COPY (several times faster than multi-row INSERTs); a duplicate
    id still fails the whole statement, as it must for an atomic batch."""
    _copy(conn, "jobs", rows)


def insert_dependencies(conn: sa.Connection, edges: Sequence[tuple[str, str]]) -> None:
    _copy(conn, "job_dependencies", [{"job_id": j, "depends_on": d} for j, d in edges])


def _copy(conn: sa.Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY rows (dicts with the same keys) into `table` within the caller's transaction;
    the dicts and lists of its jsonb columns go as JSON."""
    if not rows:
        return
    columns = list(rows[0])
    values_of = itemgetter(*columns)
    jsonb = {c.name for c in metadata.tables[table].c if isinstance(c.type, JSONB)}
    json_positions = [i for i, name in enumerate(columns) if name in jsonb]
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
        with cursor.copy(statement) as copy:
            for row in rows:
                values = list(values_of(row)) if len(columns) > 1 else [row[columns[0]]]
                for i in json_positions:
                    values[i] = _copyable(values[i])
                copy.write_row(values)


def _copyable(value: Any) -> Any:
    """dicts and lists go to jsonb columns, as JSON text (what Jsonb would send)."""
    return json.dumps(value) if isinstance(value, dict | list) else value


def find_by_id_or_key(
    conn: sa.Connection, job_id: str | None, idempotency_key: str | None
) -> Row | None:
    if job_id is not None:
        row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        if row is not None:
            return row
    if idempotency_key is not None:
        return conn.execute(
            sa.select(jobs).where(jobs.c.idempotency_key == idempotency_key)
        ).first()
    return None


def lock_statuses_for_dependency(conn: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
    """Statuses of existing jobs named as dependencies, share-locked.

    The share lock makes a concurrent completion of one of them wait for this submission,
    so its dependents decrement sees the new edges: no decrement is lost.
    """
    if not ids:
        return {}
    rows = conn.execute(
        sa.text("SELECT id, status FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR SHARE"),
        {"ids": list(ids)},
    ).all()
    return {r.id: r.status for r in rows}


def existing_ids(conn: sa.Connection, ids: Sequence[str]) -> set[str]:
    if not ids:
        return set()
    rows = conn.execute(sa.text("SELECT id FROM jobs WHERE id = ANY(:ids)"), {"ids": list(ids)})
    return {r.id for r in rows}


# --- reads ----------------------------------------------------------------------------


# A job row as the product shows it. Admission and the claim write only the lease, not the
# jobs row (migration 0016): while admitted, `queued_at` is the lease's grant time; while
# its lease is started, the job is running that attempt, which started then.
# (Literals, not parameters: GET /jobs/{id} runs this compiled, on the driver.)
_RUNNING_ON_LEASE = sa.literal_column(on_lease_alone("jobs", "leases"), sa.Boolean)
_SHOWN_FROM_LEASE: dict[str, sa.ColumnElement[Any]] = {
    "status": sa.case((_RUNNING_ON_LEASE, sa.literal_column("'running'")), else_=jobs.c.status),
    "attempts": sa.case((_RUNNING_ON_LEASE, leases.c.attempt), else_=jobs.c.attempts),
    "started_at": sa.case((_RUNNING_ON_LEASE, leases.c.started_at), else_=jobs.c.started_at),
    "queued_at": sa.func.coalesce(jobs.c.queued_at, leases.c.granted_at),
}
_WITH_LEASE = jobs.outerjoin(leases, leases.c.job_id == jobs.c.id)


def _shown(names: Sequence[str]) -> list[sa.ColumnElement[Any]]:
    return [
        _SHOWN_FROM_LEASE[name].label(name) if name in _SHOWN_FROM_LEASE else jobs.c[name]
        for name in names
    ]


# The status a job shows, in SQL, for a jobs row aliased `alias` (correlated reads).
def shown_status(alias: str) -> str:
    return (
        f"CASE WHEN EXISTS (SELECT 1 FROM leases sl WHERE sl.job_id = {alias}.id "
        f"AND {on_lease_alone(alias, 'sl')}) THEN 'running' ELSE {alias}.status END"
    )


_JOB_WITH_LEASE: sa.Select[Any] = sa.select(*_shown([c.name for c in jobs.c])).select_from(
    _WITH_LEASE
)


def get_job(conn: sa.Connection, job_id: str) -> Row | None:
    return conn.execute(_JOB_WITH_LEASE.where(jobs.c.id == job_id)).first()


def submitted_jobs(conn: sa.Connection, ids: Sequence[str]) -> dict[str, Row]:
    """The stored jobs among `ids` with what a repeated submission is checked against
    (request_hash) and what its answer shows (status as shown, created_at, priority)."""
    if not ids:
        return {}
    columns = _shown(["id", "request_hash", "status", "created_at", "priority"])
    query = sa.select(*columns).select_from(_WITH_LEASE).where(jobs.c.id.in_(list(ids)))
    return {row.id: row for row in conn.execute(query)}


# What GET /jobs/{id} shows beside the row, as correlated subqueries of the same statement
# (one round trip instead of four): the parents with their statuses, the dependents, the
# latest progress report (ix_job_dependencies_*, ix_job_events_job).
_JOB_DETAIL: sa.Select[Any] = _JOB_WITH_LEASE.add_columns(
    sa.literal_column(
        "(SELECT coalesce(json_agg(json_build_array(p.id, "
        f"{shown_status('p')}) ORDER BY p.seq), '[]') "
        " FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on WHERE d.job_id = jobs.id)"
    ).label("dependencies"),
    sa.literal_column(
        "(SELECT coalesce(json_agg(d.job_id ORDER BY c.seq), '[]') "
        " FROM job_dependencies d JOIN jobs c ON c.id = d.job_id WHERE d.depends_on = jobs.id)"
    ).label("dependents"),
    sa.literal_column(
        "(SELECT json_build_object('at', e.at, 'data', e.data) FROM job_events e "
        " WHERE e.job_id = jobs.id AND e.event = 'job_progress' ORDER BY e.id DESC LIMIT 1)"
    ).label("progress"),
)


# Compiled once and run on the driver (GET /jobs/{id} is the hottest read): SQLAlchemy's
# cache-key walk and result processing cost more than the statement's index lookups, and
# psycopg prepares it on each connection after a few executions.
_JOB_DETAIL_SQL = str(
    _JOB_DETAIL.where(jobs.c.id == sa.bindparam("job_id")).compile(dialect=_PG_DIALECT)
)


def get_job_detail(conn: sa.Connection, job_id: str) -> Any | None:
    """The job's row with `dependencies` ([id, status] of each parent), `dependents` (ids)
    and `progress` ({at, data} of the latest report, or None), in one statement; a named
    tuple with the columns of `jobs` as attributes, or None."""
    with driver_connection(conn, _JOB_DETAIL_SQL) as driver:
        cursor = driver.cursor(row_factory=namedtuple_row)
        return cursor.execute(_JOB_DETAIL_SQL, {"job_id": job_id}).fetchone()


# A list page's columns: no payload or result to decode, so a page reads 51 index
# entries, their rows and their leases (status, attempts and start of a running job).
_JOB_SUMMARY: sa.Select[Any] = sa.select(
    *_shown(
        (
            "id", "type", "priority", "status", "attempts", "created_at", "started_at",
            "finished_at", "cpu_units", "memory_mb", "cancel_reason", "last_error",
        )
    )
).select_from(_WITH_LEASE)  # fmt: skip


def _status_filter(status: str) -> sa.ColumnElement[bool]:
    if status == "running":
        # Few rows, found from the started leases (a backlog of pending rows is not read).
        started = sa.select(leases.c.job_id).where(leases.c.started_at.is_not(None))
        return sa.and_(
            jobs.c.id.in_(started), sa.or_(jobs.c.status == "running", _RUNNING_ON_LEASE)
        )
    if status == "pending":
        return sa.and_(jobs.c.status == "pending", sa.not_(_RUNNING_ON_LEASE))
    return jobs.c.status == status


def list_jobs(
    conn: sa.Connection,
    *,
    status: str | None,
    type_: str | None,
    priority: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> Sequence[Row]:
    """A page newest first; `after` is the (created_at, id) keyset of the previous page.
    Rows carry the summary columns only (api.schemas.summary_fields)."""
    query = _JOB_SUMMARY
    if status is not None:
        query = query.where(_status_filter(status))
    if type_ is not None:
        query = query.where(jobs.c.type == type_)
    if priority is not None:
        query = query.where(jobs.c.priority == priority)
    if created_after is not None:
        query = query.where(jobs.c.created_at > created_after)
    if created_before is not None:
        query = query.where(jobs.c.created_at < created_before)
    if after is not None:
        query = query.where(sa.tuple_(jobs.c.created_at, jobs.c.id) < sa.tuple_(*after))
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
    return conn.execute(query).all()


# For the rest of the transaction; sent with the read below in one round trip.
_FORCE_INDEX_WALK = (
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
)
_RANKED_AHEAD = (
    "SELECT array_agg(a.rank) AS ranks, array_agg(a.seq) AS seqs "
    "FROM (SELECT j.rank, j.seq FROM jobs j "
    f"  WHERE j.status = 'pending' AND {_NO_LEASE} "
    "  AND (j.rank, j.seq) < (%(rank)s, %(seq)s) ORDER BY j.rank, j.seq LIMIT %(cap)s) a"
)


@dataclass(frozen=True)
class RankedAhead:
    """The first `cap` unadmitted ready jobs ranked before `bound`, as (rank, seq) pairs in
    rank order: enough to place every key up to `bound` (`places`)."""

    bound: tuple[float, int]
    pairs: list[tuple[float, int]]

    def covers(self, keys: Sequence[tuple[float, int]]) -> bool:
        return not keys or max(keys) <= self.bound

    def places(self, keys: Sequence[tuple[float, int]]) -> list[int]:
        """How many of those jobs rank ahead of each key (the cap means "cap or more")."""
        return [bisect_left(self.pairs, key) for key in keys]


# A bound past every job's `seq`: the jobs of the current transaction count too.
_LAST_SEQ = 2**63 - 1


def _send_ranked_ahead(cursor: psycopg.Cursor[Any], bound: tuple[float, int], cap: int) -> None:
    """Send the walk on `cursor` (in a pipeline, with other statements); `_read_ranked_ahead`
    reads its answer."""
    cursor.execute(_FORCE_INDEX_WALK, prepare=True)
    cursor.execute(_RANKED_AHEAD, {"rank": bound[0], "seq": bound[1], "cap": cap}, prepare=True)


def _read_ranked_ahead(cursor: psycopg.Cursor[Any], bound: tuple[float, int]) -> RankedAhead:
    row = cursor.fetchone()  # the cursor answers with its last statement's rows
    assert row is not None
    ranks, seqs = row
    return RankedAhead(bound, sorted(zip(ranks or (), seqs or (), strict=True)))


def positions_in_queue(
    conn: sa.Connection, keys: Sequence[tuple[float, int]], cap: int
) -> list[int]:
    """For each (rank, seq), how many unadmitted ready jobs rank ahead of it, counted up
    to `cap` (`cap` means "cap or more").

    One walk of ix_jobs_admission in index order for all the keys: the first `cap` ready
    jobs ranked ahead of the last key; each key's count is its place among them. The keys
    are passed in (not joined), and the plan is forced to that walk for the rest of the
    transaction: a table not analyzed yet (a new database filling up) otherwise gets a
    bitmap scan of every ready job and a sort (50 ms at 28,000 ready jobs, measured).
    `insert_new_jobs` takes the same walk in its own round trip when asked.
    """
    if not keys:
        return []
    bound = max(keys)
    with driver_connection(conn, _RANKED_AHEAD) as raw, raw.pipeline(), raw.cursor() as cursor:
        _send_ranked_ahead(cursor, bound, cap)
        ranked = _read_ranked_ahead(cursor, bound)
    return ranked.places(keys)


def candidates_ahead(
    conn: sa.Connection, job_id: str, rank: float, seq: int, limit: int
) -> list[Candidate]:
    """The ready jobs ranked up to and including job `job_id` at (rank, seq), when it is
    among the first `limit` ready jobs (what one admission step looks at); else none.

    The jobs ranked up to a job are a prefix of admission order, so this is the admission
    read (`ready_candidates`: the first `limit` ready jobs, an index walk) cut at the job.
    The bound is applied outside that read on purpose: inside its WHERE clause the planner,
    guessing how many rows the bound keeps, chose a hash anti-join and a sort of every
    ready job (about 100 ms at 10 M rows). A job further back gets no rows at all: its
    wait is explained without them, so they are not sent.
    """
    rows = conn.execute(
        sa.text(
            "WITH admission_window AS MATERIALIZED ("
            "  SELECT j.id, j.priority, j.cpu_units, j.memory_mb, j.pending_since, j.rank, "
            "    j.seq FROM jobs j "
            f"  WHERE j.status = 'pending' AND {_NO_LEASE} "
            "  ORDER BY j.rank, j.seq LIMIT :limit"
            ") SELECT w.id, w.priority, w.cpu_units, w.memory_mb, w.pending_since "
            "FROM admission_window w WHERE (w.rank, w.seq) <= (:rank, :seq) "
            "AND EXISTS (SELECT 1 FROM admission_window x WHERE x.id = :job_id) "
            "ORDER BY w.rank, w.seq"
        ),
        {"job_id": job_id, "rank": rank, "seq": seq, "limit": limit},
    ).all()
    return [_candidate(r) for r in rows]


def running_on_leases(conn: sa.Connection, counts: dict[str, int]) -> dict[str, int]:
    """`counts` by the status of the rows, with the jobs whose row says pending while their
    lease is started (the claim writes only the lease) counted as running."""
    moved = conn.execute(
        sa.text(
            f"SELECT count(*) FROM leases l JOIN jobs j ON j.id = l.job_id WHERE {on_lease_alone()}"
        )
    ).scalar_one()
    if moved:
        counts["pending"] = counts.get("pending", 0) - moved
        counts["running"] = counts.get("running", 0) + moved
    return counts


def ready_depth_by_priority(conn: sa.Connection) -> dict[str, int]:
    rows = conn.execute(
        sa.text(
            "SELECT j.priority, count(*) AS n FROM jobs j "
            f"WHERE j.status = 'pending' AND {_NO_LEASE} GROUP BY j.priority"
        )
    ).all()
    return {r.priority: int(r.n) for r in rows}


# --- admission ------------------------------------------------------------------------


def _candidate(row: Row) -> Candidate:
    return Candidate(
        job_id=row.id,
        priority=Priority(row.priority),
        cpu_units=row.cpu_units,
        memory_mb=row.memory_mb,
        pending_since=row.pending_since,
    )


def ready_candidates(conn: sa.Connection, limit: int) -> list[tuple[Candidate, int]]:
    """The best-ranked ready jobs without a lease, with their attempts so far.

    The same read as the `taskq_admit` function's (migration 0002): ix_jobs_admission in
    order, skipping the few admitted jobs by the leases primary key. Cost grows with
    `limit` plus the number of admitted-but-unclaimed jobs, not with the table.
    """
    rows = conn.execute(
        sa.text(
            "SELECT j.id, j.priority, j.cpu_units, j.memory_mb, j.pending_since, j.attempts "
            f"FROM jobs j WHERE j.status = 'pending' AND {_NO_LEASE} "
            "ORDER BY j.rank, j.seq LIMIT :limit"
        ),
        {"limit": limit},
    ).all()
    return [(_candidate(r), r.attempts) for r in rows]


# --- execution ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedAttempt:
    """What the worker needs to run a claimed attempt: returned by the claim itself."""

    job_id: str
    attempt: int
    type: str
    payload: dict[str, Any]
    timeout_seconds: float
    priority: str
    created_at: datetime
    pending_since: datetime | None


def lock_running(conn: sa.Connection, attempts: Sequence[tuple[str, int]]) -> dict[str, Row]:
    """The running rows of these (job, attempt) pairs, locked in id order.

    Found by primary key alone and filtered here: with `status = 'running'` beside it the
    planner may walk the status index, whose running range is mostly dead entries.
    """
    if not attempts:
        return {}
    wanted = dict(attempts)
    rows = conn.execute(
        sa.text("SELECT * FROM jobs WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"),
        {"ids": list(wanted)},
    ).all()
    return {r.id: r for r in rows if r.status == "running" and r.attempts == wanted[r.id]}


def lock_job(conn: sa.Connection, job_id: str) -> None:
    """Lock the job's row, if it exists, until the end of the transaction."""
    conn.execute(sa.text("SELECT 1 FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id})


def is_cancel_requested(conn: sa.Connection, job_id: str) -> bool:
    row = conn.execute(
        sa.text("SELECT cancel_requested_at IS NOT NULL AS requested FROM jobs WHERE id = :id"),
        {"id": job_id},
    ).first()
    return bool(row and row.requested)


# --- dependencies ---------------------------------------------------------------------


def cancelled_downstream(conn: sa.Connection, root_id: str) -> dict[str, dict[str, str]]:
    """The descendants of `root_id` cancelled by an upstream failure or cancel, locked, each
    with its parents' statuses (for `dependency_graph.revivable`)."""
    ids = (
        conn.execute(
            sa.text(
                f"{DESCENDANTS_OF_ROOT} "
                "SELECT j.id FROM jobs j JOIN descendants USING (id) "
                "WHERE j.status = 'cancelled' AND j.cancel_reason LIKE 'upstream\\_%' "
                "ORDER BY j.id FOR UPDATE OF j"
            ),
            {"root": root_id},
        )
        .scalars()
        .all()
    )
    if not ids:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT d.job_id, d.depends_on, p.status FROM job_dependencies d "
            "JOIN jobs p ON p.id = d.depends_on WHERE d.job_id = ANY(:ids)"
        ),
        {"ids": list(ids)},
    ).all()
    parents: dict[str, dict[str, str]] = {job_id: {} for job_id in ids}
    for row in rows:
        parents[row.job_id][row.depends_on] = row.status
    return parents


def delete_finished_before(conn: sa.Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` jobs finished before `cutoff` (ix_jobs_finished), oldest first.

    Kept: a job an open dead letter refers to, and a job a replay of it can still revive
    (cancelled by that dead job's failure: its cancel reason names the root). Edges go with
    the deleted jobs (cascade), their events in the same statement (`job_events` has no
    foreign key, migration 0014).
    """
    deleted = conn.execute(
        sa.text(
            "WITH gone AS ("
            "  DELETE FROM jobs WHERE id IN (SELECT j.id FROM jobs j "
            "    WHERE j.finished_at < :cutoff AND NOT EXISTS (SELECT 1 FROM dead_letters d "
            "      WHERE d.resolved_at IS NULL AND (d.job_id = j.id "
            "        OR j.cancel_reason = 'upstream_failed:' || d.job_id)) "
            "    ORDER BY j.finished_at LIMIT :limit) "
            "  RETURNING id"
            "), events AS ("
            "  DELETE FROM job_events e USING gone WHERE e.job_id = gone.id"
            ") SELECT count(*) FROM gone"
        ),
        {"cutoff": cutoff, "limit": limit},
    ).scalar_one()
    return int(deleted)


# --- cancellation requests ------------------------------------------------------------


def request_cancel_running(conn: sa.Connection, job_id: str, now: datetime) -> bool:
    result = conn.execute(
        sa.text(
            "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, :now) "
            "WHERE id = :id AND status = 'running'"
        ),
        {"id": job_id, "now": now},
    )
    return result.rowcount == 1
