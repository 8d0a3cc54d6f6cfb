"""PATCH /jobs/{id}/cancel in every status: waiting jobs are cancelled at once, a running
attempt is stopped promptly, tokens come back, dependents are cancelled with the job, and
a cancel racing a completion leaves exactly one consistent outcome."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import sqlalchemy as sa

from tests.support.product import Product, wait_until

StartProduct = Callable[..., Product]  # the start_product fixture

TERMINAL_EVENTS = {"job_completed", "job_failed", "job_cancelled"}


def cancel(product: Product, job_id: str) -> Any:
    return product.http.patch(f"/jobs/{job_id}/cancel")


def logs(product: Product, job_id: str) -> list[dict[str, Any]]:
    return list(product.http.get(f"/jobs/{job_id}/logs").json()["items"])


def last_transition(product: Product, job_id: str) -> tuple[str | None, str]:
    # transitions only (`job_<status>`), not job_log or job_progress lines
    transitions = [
        e for e in logs(product, job_id) if e["event"] == f"job_{e['data'].get('status')}"
    ]
    return transitions[-1]["data"].get("previous_status"), transitions[-1]["data"]["status"]


def tokens_used(product: Product) -> tuple[int, int]:
    tokens = product.http.get("/stats").json()["tokens"]
    return tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]


def lease_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one())


def assert_cancelled_by_request(product: Product, response: Any, previous: str) -> None:
    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["status"], job["cancel_reason"]) == ("cancelled", "cancelled_by_request")
    assert job["finished_at"] is not None
    assert last_transition(product, job["job_id"]) == (previous, "cancelled")


def test_cancel_retrying_job(product: Product, engine: sa.Engine) -> None:
    # Given a job waiting out a one-minute backoff after its first attempt failed
    job_id = product.submit(
        {
            "type": "noop",
            "payload": {"fail_times": 5},
            "retry_config": {"max_attempts": 3, "initial_delay_seconds": 60},
        }
    )["job_id"]
    retrying = product.wait_for_status(job_id, "retrying")
    assert retrying["next_attempt_at"] is not None
    assert retrying["waiting_reason"] == "backoff"
    # and holding no tokens meanwhile
    assert tokens_used(product) == (0, 0)
    assert lease_count(engine) == 0

    # When it is cancelled
    response = cancel(product, job_id)

    # Then it is cancelled at once and will not be tried again
    assert_cancelled_by_request(product, response, "retrying")
    job = product.job(job_id)
    assert (job["attempts"], job["next_attempt_at"]) == (1, None)


def test_cancel_running_job_stops_the_attempt(product: Product, engine: sa.Engine) -> None:
    # Given a job running a 30-second attempt, with a dependent waiting for it
    job_id = product.submit({"type": "long_running", "payload": {"duration_seconds": 30}})["job_id"]
    dependent = product.submit({"type": "noop", "depends_on": [job_id]})["job_id"]
    product.wait_for_status(job_id, "running")
    assert tokens_used(product) == (1, 128)

    # When it is cancelled
    requested = time.monotonic()
    response = cancel(product, job_id)

    # Then the request is accepted while the attempt is being stopped
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested_at"] is not None
    # and the attempt stops within about a second
    job = product.wait_for_status(job_id, "cancelled", timeout=10)
    assert time.monotonic() - requested < 3.0  # wall clock, HTTP polling included
    assert (job["cancel_reason"], job["attempts"]) == ("cancelled_by_request", 1)
    stopped_after = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(
        job["cancel_requested_at"]
    )
    assert stopped_after < timedelta(seconds=1.5)  # cancel poll 0.1 s, on a busy machine
    # and its tokens are back
    assert tokens_used(product) == (0, 0)
    assert lease_count(engine) == 0
    # and the logs show the request and the stopped attempt
    events = logs(product, job_id)
    assert [e["event"] for e in events if e["event"] in {"cancel_requested", "job_cancelled"}] == [
        "cancel_requested",
        "job_cancelled",
    ]
    stopped = next(e for e in events if e["event"] == "job_cancelled")
    assert stopped["data"]["previous_status"] == "running"
    assert stopped["data"]["result"] == "cancelled"
    assert events[-1]["event"] == "tokens_released"
    # and the dependent is cancelled because of it
    downstream = product.wait_for_status(dependent, "cancelled", timeout=5)
    assert downstream["cancel_reason"] == f"upstream_cancelled:{job_id}"


def test_cancel_finished_or_unknown_job_is_refused(product: Product) -> None:
    # Given a completed, a failed and a cancelled job
    completed = product.submit({"type": "noop"})["job_id"]
    failed = product.submit({"type": "noop", "payload": {"error": "invalid iban"}})["job_id"]
    run_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    cancelled = product.submit({"type": "noop", "run_at": run_at})["job_id"]
    assert cancel(product, cancelled).status_code == 200
    product.wait_for_status(completed, "completed")
    product.wait_for_status(failed, "failed")

    # When each is cancelled, Then 409 not_cancellable and nothing changes
    for job_id, status in [(completed, "completed"), (failed, "failed"), (cancelled, "cancelled")]:
        response = cancel(product, job_id)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "not_cancellable"
        assert product.job(job_id)["status"] == status

    # And an unknown job is 404
    response = cancel(product, "no_such_job")
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "job_not_found"


def test_cancel_blocked_scheduled_and_pending_jobs(
    start_product: StartProduct, engine: sa.Engine
) -> None:
    # Given no worker yet: a pending job admitted with its tokens, waiting for a worker
    product = start_product(workers=0)
    admitted = product.submit({"type": "noop", "resource_requirements": {"cpu_units": 2}})
    # (a submission admits without waiting for the pool: when maintenance holds it, the
    # ticker admits the job a moment later)
    wait_until(
        lambda: product.job(admitted["job_id"])["queued_at"] is not None,
        10,
        0.05,
        "the first job to be admitted",
    )
    assert tokens_used(product) == (2, 128)
    # and, the scheduler paused, a pending job without tokens, a blocked chain after it,
    # and a job scheduled an hour from now
    assert product.http.post("/scheduler/pause").status_code == 200
    waiting = product.submit({"type": "noop"})["job_id"]
    blocked = product.submit({"type": "noop", "depends_on": [waiting]})["job_id"]
    downstream = product.submit({"type": "noop", "depends_on": [blocked]})["job_id"]
    run_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = product.submit({"type": "noop", "run_at": run_at})["job_id"]
    statuses = [product.job(j)["status"] for j in (waiting, blocked, downstream, scheduled)]
    assert statuses == ["pending", "blocked", "blocked", "scheduled"]

    # When the blocked job is cancelled
    # Then it is cancelled at once and so is its dependent
    assert_cancelled_by_request(product, cancel(product, blocked), "blocked")
    dependent = product.job(downstream)
    assert (dependent["status"], dependent["cancel_reason"]) == (
        "cancelled",
        f"upstream_cancelled:{blocked}",
    )
    assert last_transition(product, downstream) == ("blocked", "cancelled")
    assert product.job(waiting)["status"] == "pending"  # upstream is untouched

    # When the scheduled and the two pending jobs are cancelled
    assert_cancelled_by_request(product, cancel(product, scheduled), "scheduled")
    assert product.job(scheduled)["next_attempt_at"] is None
    assert_cancelled_by_request(product, cancel(product, waiting), "pending")
    assert_cancelled_by_request(product, cancel(product, admitted["job_id"]), "pending")

    # Then the admitted job's tokens are back
    assert tokens_used(product) == (0, 0)
    assert lease_count(engine) == 0
    released = [e for e in logs(product, admitted["job_id"]) if e["event"] == "tokens_released"]
    assert len(released) == 1

    # When a worker starts and the scheduler resumes
    product.http.post("/scheduler/resume")
    worker = product.start_worker(threads=2)

    # Then the cancelled job's message, still in RabbitMQ, is skipped: nothing ever runs
    wait_until(
        lambda: "message_skipped" in worker.log_path.read_text(errors="replace"),
        10,
        0.1,
        "the cancelled job's message to be skipped",
    )
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM job_events WHERE event = 'job_running'")
            ).scalar_one()
            == 0
        )
        final = conn.execute(sa.text("SELECT DISTINCT status FROM jobs")).scalars().all()
    assert final == ["cancelled"]


def test_cancel_racing_completion_has_one_consistent_outcome(
    start_product: StartProduct, engine: sa.Engine
) -> None:
    # Given workers that look for cancel requests every 10 ms, so that a 50 ms attempt can
    # be stopped mid-run as well as finish first
    product = start_product(workers=2, threads=4, TASKQ_CANCEL_POLL_SECONDS="0.01")
    rng = random.Random(5)
    answers: dict[str, int] = {}

    def claimed(job_id: str) -> bool:
        return bool(product.job(job_id)["status"] != "pending")

    # When a stream of 50 ms jobs is cancelled: at once, as a worker claims them, somewhere
    # during their run, and about when they finish
    for index in range(40):
        job_id = product.submit({"type": "noop", "payload": {"duration_seconds": 0.05}})["job_id"]
        match index % 4:
            case 1:
                wait_until(partial(claimed, job_id), 10, 0.002)
            case 2:
                time.sleep(rng.uniform(0.0, 0.1))
            case 3:
                # The handler starts once the claim's batch is answered, a few ms after the
                # claim is visible: aim on both sides of its end
                wait_until(partial(claimed, job_id), 10, 0.002)
                time.sleep(rng.uniform(0.045, 0.08))
        answers[job_id] = cancel(product, job_id).status_code
    # The moment a handler starts after its claim is visible varies with the machine's
    # load, so ten aims at the end of a run can all land mid-run: aim again over a sweep of
    # delays (30 .. 145 ms after the claim), bounded, until one cancel answered 202 stopped
    # its run and another lost to the run's end.
    sweep = [0.03 + 0.005 * step for step in range(24)]
    for extra in range(72):
        jobs = product.wait_all_terminal(list(answers), timeout=30)
        raced = {jobs[j]["status"] for j, answer in answers.items() if answer == 202}
        if raced == {"completed", "cancelled"}:
            break
        job_id = product.submit({"type": "noop", "payload": {"duration_seconds": 0.05}})["job_id"]
        wait_until(partial(claimed, job_id), 10, 0.002)
        time.sleep(sweep[extra % len(sweep)])
        answers[job_id] = cancel(product, job_id).status_code
    jobs = product.wait_all_terminal(list(answers), timeout=30)

    # Then each ended completed or cancelled, consistently with the answer to its cancel
    outcomes = {job_id: job["status"] for job_id, job in jobs.items()}
    assert set(outcomes.values()) <= {"completed", "cancelled"}
    assert set(answers.values()) <= {200, 202, 409}
    for job_id, job in jobs.items():
        answer, status = answers[job_id], job["status"]
        if answer == 409:  # it had already finished
            assert status == "completed"
        if answer == 200:  # cancelled when answered (waiting, or stopped at once)
            assert status == "cancelled"
        if status == "cancelled":
            assert job["cancel_reason"] == "cancelled_by_request"
            assert job["result"] is None
        else:
            assert job["result"] == {"slept_seconds": 0.05}
        # and its history has one terminal transition and at most one run
        events = [e["event"] for e in logs(product, job_id)]
        assert [e for e in events if e in TERMINAL_EVENTS] == [f"job_{status}"], events
        assert events.count("job_running") == job["attempts"] <= 1
        assert events.count("tokens_granted") == events.count("tokens_released") <= 1
    # and the race went both ways: running attempts were stopped, others finished first
    running_outcomes = {outcomes[j] for j, answer in answers.items() if answer == 202}
    assert running_outcomes == {"completed", "cancelled"}, (answers, outcomes)
    # and every token is back
    assert tokens_used(product) == (0, 0)
    assert lease_count(engine) == 0
