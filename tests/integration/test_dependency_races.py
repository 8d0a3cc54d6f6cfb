"""Dependency bookkeeping under concurrent completions, against real PostgreSQL.

Two parents of one job finishing at the same moment on different workers must neither
lose a decrement (the child would stay blocked forever) nor enqueue the child twice.
Each worker's completion is one flush of its writer: `taskq_worker_flush` alone for a
success, `lifecycle.finish_attempts` first for anything else; here two threads with their
own connections play the two worker processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa

from queue_service import transitions
from queue_service.db import in_autocommit, in_transaction
from queue_service.lifecycle import AttemptEnd, FinishedAttempts, cancel_job, finish_attempts
from queue_service.repository import jobs as jobs_repo
from queue_service.retry_policy import AttemptResult
from queue_service.settings import Settings
from queue_service.submission import JobSpec, submit_batch, submit_job
from queue_service.worker_batch import FlushResult, apply_flush, split_ends

ROUNDS = 30


def _now() -> datetime:
    return datetime.now(UTC)


def _submit(engine: sa.Engine, settings: Settings, specs: list[JobSpec]) -> set[str]:
    """Submit a batch; returns the ids admitted at once."""
    _, admitted = in_transaction(engine, lambda conn: submit_batch(conn, settings, specs, _now()))
    return {a.job_id for a in admitted}


def _start(engine: sa.Engine, job_id: str) -> None:
    """What a worker's AttemptClaim does: pending (admitted) -> running, lease started."""

    def claim(conn: sa.Connection) -> None:
        claimed = transitions.claim_attempts(conn, [(job_id, 1)], "test-worker", 60, _now())
        assert [c.job_id for c in claimed] == [job_id], f"{job_id} not claimed"

    in_transaction(engine, claim)


def _finish(
    engine: sa.Engine, settings: Settings, job_id: str, result: AttemptResult
) -> FinishedAttempts | FlushResult:
    """What a worker's writer does with the attempt's end: one flush, one transaction."""
    error = None if result is AttemptResult.SUCCEEDED else "boom"
    ends = split_ends([AttemptEnd(job_id, 1, result, error)])

    def flush(conn: sa.Connection) -> FlushResult:
        return apply_flush(
            conn, settings, "test-worker", [], ends, _now(), lambda job, attempt: {"job_id": job}
        )

    if ends.others:
        return in_transaction(engine, flush)
    return in_autocommit(engine, flush)


def _at_once(
    *calls: Callable[[], FinishedAttempts | FlushResult],
) -> list[FinishedAttempts | FlushResult]:
    """Run the calls on threads released together by a barrier; re-raise their errors."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait(timeout=10)
        try:
            results[index] = calls[index]()
        except BaseException as error:  # surfaced in the main thread below
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a completion hung"
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _job(engine: sa.Engine, job_id: str) -> sa.Row[Any]:
    with engine.connect() as conn:
        job = jobs_repo.get_job(conn, job_id)
    assert job is not None
    return job


def _event_counts(engine: sa.Engine, job_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT event, count(*) AS n FROM job_events WHERE job_id = :id GROUP BY 1"),
            {"id": job_id},
        ).all()
    return {r.event: int(r.n) for r in rows}


def _leases_of(engine: sa.Engine, job_id: str) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT attempt FROM leases WHERE job_id = :id"), {"id": job_id}
        ).all()
    return [r.attempt for r in rows]


def _pool_used(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT cpu_used, memory_used FROM resource_pool")).one()
    return int(row.cpu_used), int(row.memory_used)


def _wait_for_lock_waiter(engine: sa.Engine, timeout: float = 10) -> None:
    """Until some backend of this database waits on a row lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("no transaction started waiting on a lock")


def _diamond(engine: sa.Engine, settings: Settings, tag: str) -> tuple[str, str, str]:
    """P1 and P2 running, C blocked on both."""
    p1, p2, child = f"p1_{tag}", f"p2_{tag}", f"c_{tag}"
    admitted = _submit(
        engine,
        settings,
        [JobSpec(job_id=p1), JobSpec(job_id=p2), JobSpec(job_id=child, depends_on=(p1, p2))],
    )
    assert admitted == {p1, p2}
    _start(engine, p1)
    _start(engine, p2)
    assert _job(engine, child).status == "blocked"
    return p1, p2, child


def test_two_parents_completing_together_enqueue_the_child_exactly_once(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    for round_ in range(ROUNDS):
        # Given two running parents of one blocked child
        p1, p2, child = _diamond(engine, settings, str(round_))

        # When both complete at the same moment, each in its own transaction
        outcomes = _at_once(
            partial(_finish, engine, settings, p1, AttemptResult.SUCCEEDED),
            partial(_finish, engine, settings, p2, AttemptResult.SUCCEEDED),
        )

        # Then no decrement was lost and the child became ready exactly once
        job = _job(engine, child)
        assert (job.status, job.remaining_deps) == ("pending", 0), f"round {round_}"
        assert job.queued_at is not None
        events = _event_counts(engine, child)
        assert events.get("job_pending") == 1, f"round {round_}: {events}"
        assert events.get("tokens_granted") == 1, f"round {round_}: {events}"
        assert _leases_of(engine, child) == [1]
        admitted = [a for o in outcomes for a in o.admitted]
        assert [(a.job_id, a.attempt) for a in admitted] == [(child, 1)], f"round {round_}"
        # and only the child holds tokens (1 CPU unit, 128 MB)
        assert _pool_used(engine) == (1, 128)

        # (cancelling the admitted child returns its tokens for the next round)
        in_transaction(engine, partial(cancel_job, settings=settings, job_id=child, now=_now()))
        assert _pool_used(engine) == (0, 0)


def test_a_completion_waiting_on_the_others_lock_still_sees_its_decrement(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given two running parents of one blocked child
    p1, p2, child = _diamond(engine, settings, "interleaved")

    # When P1's completion has decremented the child but not yet committed,
    with engine.connect() as first:
        first.begin()
        finish_attempts(
            first,
            settings,
            [AttemptEnd(p1, 1, AttemptResult.SUCCEEDED)],
            _now(),
            lambda job, attempt: {},
        )
        # and P2's completion runs meanwhile and waits on the child's row lock,
        second: list[FinishedAttempts | FlushResult] = []
        thread = threading.Thread(
            target=lambda: second.append(_finish(engine, settings, p2, AttemptResult.SUCCEEDED))
        )
        thread.start()
        _wait_for_lock_waiter(engine)
        assert _job(engine, child).remaining_deps == 2  # nothing visible before the commit
        first.commit()
    thread.join(timeout=30)

    # Then the waiting completion re-read the committed count and made the child ready
    assert second and [a.job_id for a in second[0].admitted] == [child]
    job = _job(engine, child)
    assert (job.status, job.remaining_deps) == ("pending", 0)
    assert _event_counts(engine, child).get("job_pending") == 1
    assert _leases_of(engine, child) == [1]


def test_a_failure_and_a_completion_together_cancel_the_child_and_never_enqueue_it(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    for round_ in range(ROUNDS // 2):
        # Given two running parents of one blocked child
        p1, p2, child = _diamond(engine, settings, f"f{round_}")

        # When P1 fails while P2 completes, at the same moment
        outcomes = _at_once(
            partial(_finish, engine, settings, p1, AttemptResult.PERMANENT_ERROR),
            partial(_finish, engine, settings, p2, AttemptResult.SUCCEEDED),
        )

        # Then the child is cancelled because of P1 and was never admitted
        job = _job(engine, child)
        assert (job.status, job.cancel_reason) == ("cancelled", f"upstream_failed:{p1}")
        assert job.queued_at is None and job.attempts == 0
        events = _event_counts(engine, child)
        assert "job_pending" not in events and "tokens_granted" not in events, events
        assert _leases_of(engine, child) == []
        assert not [a for o in outcomes for a in o.admitted]
        assert _pool_used(engine) == (0, 0)


def test_a_grandchild_submitted_while_its_ancestor_fails_is_cancelled_too(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given A running and C blocked on it
    assert _submit(
        engine, settings, [JobSpec(job_id="a"), JobSpec(job_id="c", depends_on=("a",))]
    ) == {"a"}
    _start(engine, "a")

    # When a submission of D (depending on C) is in flight, holding C's share lock,
    with engine.connect() as submission:
        submission.begin()
        submit_job(submission, settings, JobSpec(job_id="d", depends_on=("c",)), _now())
        # and A fails meanwhile: its cascade waits on C until the submission commits
        failure: list[FinishedAttempts | FlushResult] = []
        thread = threading.Thread(
            target=lambda: failure.append(
                _finish(engine, settings, "a", AttemptResult.PERMANENT_ERROR)
            )
        )
        thread.start()
        _wait_for_lock_waiter(engine)
        submission.commit()
    thread.join(timeout=30)
    assert failure, "the failure did not finish"

    # Then every transitive dependent of A is cancelled, including the new D
    for job_id in ("c", "d"):
        job = _job(engine, job_id)
        assert (job.status, job.cancel_reason) == ("cancelled", "upstream_failed:a"), job_id


def test_a_child_submitted_while_its_parent_completes_is_counted_down(
    clean_state: None, engine: sa.Engine, settings: Settings
) -> None:
    # Given P running
    assert _submit(engine, settings, [JobSpec(job_id="p")]) == {"p"}
    _start(engine, "p")

    # When a submission of C (depending on P) is in flight, holding P's share lock,
    with engine.connect() as submission:
        submission.begin()
        submit_job(submission, settings, JobSpec(job_id="c", depends_on=("p",)), _now())
        # and P's success is flushed meanwhile: it waits on P until the submission commits
        done: list[FinishedAttempts | FlushResult] = []
        thread = threading.Thread(
            target=lambda: done.append(_finish(engine, settings, "p", AttemptResult.SUCCEEDED))
        )
        thread.start()
        _wait_for_lock_waiter(engine)
        submission.commit()
    thread.join(timeout=30)
    assert done, "the completion did not finish"

    # Then the completion saw the new edge: C is ready and admitted, never blocked forever
    job = _job(engine, "c")
    assert (job.status, job.remaining_deps) == ("pending", 0)
    assert [a.job_id for a in done[0].admitted] == ["c"]
