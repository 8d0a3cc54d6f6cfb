"""The worker's flush function (`taskq_worker_flush`, migration 0004) against the Python path
it replaces for claims and successes (`claim_attempts` + `finish_attempts`): the same
scenario run through each, on two copies of one DAG, leaves the same rows and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from queue_service import transitions
from queue_service.db import in_autocommit, in_transaction
from queue_service.lifecycle import AttemptEnd, finish_attempts
from queue_service.model import JobStatus
from queue_service.repository.jobs import shown_status
from queue_service.retry_policy import AttemptResult
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch
from queue_service.worker_batch import ClaimRequest, apply_flush, split_ends

WORKER = "test-worker"


def _body(job_id: str, attempt: int) -> dict[str, Any]:
    """The dead-letter message body (its content does not matter here)."""
    return {"job_id": job_id, "attempt": attempt}


def _dag(suffix: str) -> list[JobSpec]:
    """P and Q; C depends on P; G on P and Q."""
    return [
        JobSpec(job_id=f"P{suffix}"),
        JobSpec(job_id=f"Q{suffix}"),
        JobSpec(job_id=f"C{suffix}", depends_on=(f"P{suffix}",)),
        JobSpec(job_id=f"G{suffix}", depends_on=(f"P{suffix}", f"Q{suffix}")),
    ]


def _snapshot(engine: sa.Engine, suffix: str) -> dict[str, Any]:
    """Rows and events of one copy, without what differs by construction (ids, times)."""
    with engine.connect() as conn:
        jobs = conn.execute(
            sa.text(
                f"SELECT left(id, 1) AS name, {shown_status('jobs')} AS status, attempts, "
                "  remaining_deps, result, "
                "  last_error, rank, finished_at IS NOT NULL AS finished, "
                "  started_at IS NOT NULL AS started, pending_since "
                "FROM jobs WHERE id LIKE :pattern ORDER BY id"
            ),
            {"pattern": f"_{suffix}"},
        ).all()
        events = conn.execute(
            sa.text(
                "SELECT left(job_id, 1) AS name, event, attempt, status, previous_status, "
                "  level, message, data "
                "FROM job_events WHERE job_id LIKE :pattern ORDER BY job_id, id"
            ),
            {"pattern": f"_{suffix}"},
        ).all()
        leases = conn.execute(
            sa.text(
                "SELECT left(job_id, 1) AS name, attempt, started_at IS NOT NULL AS started, "
                "  worker FROM leases WHERE job_id LIKE :pattern ORDER BY job_id"
            ),
            {"pattern": f"_{suffix}"},
        ).all()
    return {
        "jobs": [tuple(r) for r in jobs],
        "events": [tuple(r) for r in events],
        "leases": [tuple(r) for r in leases],
    }


def test_the_flush_function_leaves_what_the_python_path_leaves(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    now = datetime.now(UTC)
    in_transaction(engine, lambda conn: submit_batch(conn, settings, _dag("1"), now))
    in_transaction(engine, lambda conn: submit_batch(conn, settings, _dag("2"), now))

    # Copy 1, the Python path: claim P and Q, then P succeeds.
    def python_path(conn: sa.Connection) -> None:
        transitions.claim_attempts(conn, [("P1", 1), ("Q1", 1)], WORKER, 10, now)

    in_transaction(engine, python_path)
    ends = [AttemptEnd("P1", 1, AttemptResult.SUCCEEDED, value={"n": 1})]
    in_transaction(engine, lambda conn: finish_attempts(conn, settings, ends, now, _body))

    # Copy 2, the flush function: the same claims, then the same success.
    claims = [ClaimRequest("P2", 1), ClaimRequest("Q2", 1)]
    claimed = in_autocommit(
        engine,
        lambda conn: apply_flush(conn, settings, WORKER, claims, split_ends([]), now, _body),
    )
    assert sorted(claimed.claimed) == [("P2", 1), ("Q2", 1)]
    assert claimed.claimed[("P2", 1)].type == "noop"
    success = split_ends([AttemptEnd("P2", 1, AttemptResult.SUCCEEDED, value={"n": 1})])
    finished = in_autocommit(
        engine, lambda conn: apply_flush(conn, settings, WORKER, [], success, now, _body)
    )
    assert finished.outcomes[("P2", 1)].status is JobStatus.COMPLETED
    assert [(a.job_id, a.attempt) for a in finished.admitted] == [("C2", 1)]

    python_rows = _snapshot(engine, "1")
    # the claim events name the worker; the Python path's claim wrote none (apply_batch did)
    flush_rows = _snapshot(engine, "2")
    flush_rows["events"] = [e for e in flush_rows["events"] if e[1] != "job_running"]
    assert flush_rows == python_rows
    statuses = {row[0]: row[1] for row in flush_rows["jobs"]}
    assert statuses == {"P": "completed", "Q": "running", "C": "pending", "G": "blocked"}


def test_a_claim_is_granted_once_and_a_success_recorded_once(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    now = datetime.now(UTC)
    in_transaction(engine, lambda conn: submit_batch(conn, settings, _dag("3"), now))
    twice = [ClaimRequest("P3", 1), ClaimRequest("P3", 1, redelivered=True)]

    def flush(claims: list[ClaimRequest], ends: list[AttemptEnd], at: datetime = now) -> Any:
        return in_autocommit(
            engine,
            lambda conn: apply_flush(conn, settings, WORKER, claims, split_ends(ends), at, _body),
        )

    # Two deliveries in one flush: one claim; a later delivery (a later flush): none.
    assert list(flush(twice, []).claimed) == [("P3", 1)]
    assert flush([ClaimRequest("P3", 1)], [], now + timedelta(milliseconds=3)).claimed == {}
    # A success recorded twice: the second finds the attempt no longer running.
    done = AttemptEnd("P3", 1, AttemptResult.SUCCEEDED)
    assert ("P3", 1) in flush([], [done]).outcomes
    assert flush([], [done]).outcomes == {}
    with engine.connect() as conn:
        events = conn.execute(
            sa.text("SELECT event, data FROM job_events WHERE job_id = 'P3' ORDER BY id")
        ).all()
    assert [e.event for e in events if e.event.startswith("job_")] == [
        "job_pending",
        "job_running",
        "job_completed",
    ]
    running = next(e for e in events if e.event == "job_running")
    assert running.data == {"worker": WORKER, "redelivered": True}


def test_failures_take_the_python_path_in_the_same_flush(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    now = datetime.now(UTC)
    in_transaction(engine, lambda conn: submit_batch(conn, settings, _dag("4"), now))
    in_autocommit(
        engine,
        lambda conn: apply_flush(
            conn,
            settings,
            WORKER,
            [ClaimRequest("P4", 1), ClaimRequest("Q4", 1)],
            split_ends([]),
            now,
            _body,
        ),
    )
    ends = split_ends(
        [
            AttemptEnd("P4", 1, AttemptResult.SUCCEEDED, value=float("nan")),  # not storable
            AttemptEnd("Q4", 1, AttemptResult.RETRYABLE_ERROR, "boom"),
        ]
    )
    assert [e.job_id for e in ends.others] == ["P4", "Q4"]
    result = in_transaction(
        engine, lambda conn: apply_flush(conn, settings, WORKER, [], ends, now, _body)
    )
    assert result.outcomes[("P4", 1)].status is JobStatus.FAILED
    assert result.outcomes[("Q4", 1)].status is JobStatus.RETRYING
    with engine.connect() as conn:
        leases = conn.execute(
            sa.text("SELECT job_id FROM leases WHERE job_id IN ('P4', 'Q4')")
        ).all()
    assert leases == []  # both attempts' tokens are back


def test_the_handler_start_reported_with_an_end_becomes_started_at(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given three attempts claimed at `claimed_at` (on delivery: they may wait for a thread)
    claimed_at = datetime.now(UTC)
    ids = ["S04", "S14", "S24"]
    specs = [JobSpec(job_id=job_id) for job_id in ids]
    in_transaction(engine, lambda conn: submit_batch(conn, settings, specs, claimed_at))
    claims = [ClaimRequest(job_id, 1) for job_id in ids]
    claimed = in_autocommit(
        engine,
        lambda conn: apply_flush(conn, settings, WORKER, claims, split_ends([]), claimed_at, _body),
    )
    assert len(claimed.claimed) == 3

    # When one succeeds (the flush function) and one fails for good (the Python path), each
    # reporting when its handler started, and the third is given back without a start
    handler_start = claimed_at + timedelta(seconds=5)
    ends = split_ends(
        [
            AttemptEnd("S04", 1, AttemptResult.SUCCEEDED, started_at=handler_start),
            AttemptEnd(
                "S14",
                1,
                AttemptResult.PERMANENT_ERROR,
                "boom",
                started_at=handler_start + timedelta(seconds=1),
            ),
            AttemptEnd("S24", 1, AttemptResult.INTERRUPTED, "given back"),
        ]
    )
    ended_at = claimed_at + timedelta(seconds=10)
    in_transaction(
        engine, lambda conn: apply_flush(conn, settings, WORKER, [], ends, ended_at, _body)
    )

    # Then started_at is when each handler started, and the claim's time where none came
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, started_at FROM jobs WHERE id LIKE 'S_4'"))
        started: dict[str, datetime] = {job_id: at for job_id, at in rows}
    assert started == {
        "S04": handler_start,
        "S14": handler_start + timedelta(seconds=1),
        "S24": claimed_at,
    }
