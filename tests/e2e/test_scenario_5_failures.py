"""Scenario 5 (tests/scenarios/5_failure_and_recovery.json) end to end: retries with
exponential backoff, per-attempt time limits, permanent failures and dead letters.

The scenario runs twice: with will_timeout shrunk (3 s of work, a 0.5 s limit) so the
suite stays fast, and verbatim (two attempts of 60 s), marked slow. A last test checks
that a time limit really stops the work: the worker thread is free again at once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from taskq_client.checks import attempt_ends, attempt_starts, expected_delay
from tests.support.product import Product
from tests.support.scenarios import load_scenario

StartProduct = Callable[..., Product]  # the start_product fixture

SCENARIO = load_scenario("5_failure_and_recovery")
JITTER_RATIO = 0.1  # Settings.retry_jitter_ratio, the default the test product runs with
# Slack for what the backoff itself does not account for: the maintenance tick that promotes
# a due job (0.2 s), admission, publishing, and a busy 2-core machine.
LATENCY_MARGIN = 1.5


def shrunk(scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario with will_timeout doing 3 s of work under a 0.5 s limit."""
    copied = copy.deepcopy(scenario)
    for job in copied["jobs"]:
        if job["job_id"] == "will_timeout":
            job["payload"]["duration_seconds"] = 3
            job["timeout_seconds"] = 0.5
    return copied


def logs(product: Product, job_id: str) -> list[dict[str, Any]]:
    response = product.http.get(f"/jobs/{job_id}/logs")
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    for item in items:
        item["at"] = datetime.fromisoformat(item["at"])
    return list(items)


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def check_scenario(product: Product, scenario: dict[str, Any], settle_timeout: float) -> None:
    """Submit the scenario's jobs, wait for them to settle and check every expectation."""
    # Given the scenario's four jobs, submitted in order
    for body in scenario["jobs"]:
        product.submit(body)
    limits = {j["job_id"]: j.get("timeout_seconds") for j in scenario["jobs"]}

    # When they all settle
    jobs = product.wait_all_terminal([j["job_id"] for j in scenario["jobs"]], settle_timeout)

    # Then the flaky call fails twice and completes on attempt 3, after waits of ~1 s and ~2 s
    flaky = jobs["unreliable_api_call"]
    assert (flaky["status"], flaky["attempts"]) == ("completed", 3)
    flaky_events = logs(product, "unreliable_api_call")
    starts, ends = attempt_starts(flaky_events), attempt_ends(flaky_events)
    assert sorted(starts) == sorted(ends) == [1, 2, 3]
    assert [ends[n]["data"]["status"] for n in (1, 2, 3)] == ["retrying", "retrying", "completed"]
    assert [ends[n]["data"]["result"] for n in (1, 2, 3)] == [
        "retryable_error",
        "retryable_error",
        "succeeded",
    ]
    for attempt in (1, 2):
        delay = expected_delay(flaky["retry_config"], attempt)
        assert delay == float(attempt)  # 1 s, then 2 s
        end = ends[attempt]
        next_at = datetime.fromisoformat(end["data"]["next_attempt_at"])
        planned = seconds(next_at - end["at"])
        assert delay <= planned <= delay * (1 + JITTER_RATIO) + 1e-3, (attempt, planned)
        gap = seconds(starts[attempt + 1] - end["at"])
        assert planned - 1e-3 <= gap <= planned + LATENCY_MARGIN, (attempt, gap, planned)
        # and while it waited out its backoff it held no tokens
        released = [
            e for e in flaky_events if e["event"] == "tokens_released" and e["attempt"] == attempt
        ]
        granted = [
            e
            for e in flaky_events
            if e["event"] == "tokens_granted" and e["attempt"] == attempt + 1
        ]
        assert len(released) == len(granted) == 1
        assert released[0]["at"] == end["at"]
        assert granted[0]["at"] >= next_at

    # and its dependent runs once, after it
    dependent = jobs["dependent_on_flaky"]
    assert (dependent["status"], dependent["attempts"]) == ("completed", 1)
    assert dependent["started_at"] >= flaky["finished_at"]
    dependent_path = [
        (e["data"].get("previous_status"), e["data"]["status"])
        for e in logs(product, "dependent_on_flaky")
        if e["event"] == f"job_{e['data'].get('status')}"  # transitions only
    ]
    assert dependent_path == [
        (None, "blocked"),
        ("blocked", "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]

    # and will_timeout makes 2 attempts, each stopped at about its time limit, then fails
    limit = float(limits["will_timeout"])
    slow = jobs["will_timeout"]
    assert (slow["status"], slow["attempts"]) == ("failed", 2)
    assert "timed out" in slow["last_error"]
    slow_events = logs(product, "will_timeout")
    starts, ends = attempt_starts(slow_events), attempt_ends(slow_events)
    assert sorted(starts) == sorted(ends) == [1, 2]
    assert [ends[n]["data"]["status"] for n in (1, 2)] == ["retrying", "failed"]
    for attempt in (1, 2):
        assert ends[attempt]["data"]["result"] == "timeout"
        ran = seconds(ends[attempt]["at"] - starts[attempt])
        assert limit <= ran <= limit + max(LATENCY_MARGIN, limit * 0.05), (attempt, ran)
    # after the default backoff (1 s, plus jitter)
    wait = seconds(starts[2] - ends[1]["at"])
    assert 1.0 <= wait <= 1.0 * (1 + JITTER_RATIO) + LATENCY_MARGIN, wait

    # and the permanent failure runs exactly once
    permanent = jobs["will_fail_permanently"]
    assert (permanent["status"], permanent["attempts"]) == ("failed", 1)
    assert "division_by_zero" in permanent["last_error"]
    assert list(attempt_starts(logs(product, "will_fail_permanently"))) == [1]

    # and both failures are dead-lettered with their reason; every token is back
    letters = product.http.get("/dead-letters").json()["items"]
    by_job = {letter["job_id"]: letter for letter in letters}
    assert sorted(by_job) == ["will_fail_permanently", "will_timeout"]
    assert len(letters) == 2
    assert (by_job["will_timeout"]["reason"], by_job["will_timeout"]["attempts"]) == ("timeout", 2)
    assert by_job["will_fail_permanently"]["reason"] == "non_retryable_error"
    assert by_job["will_fail_permanently"]["attempts"] == 1
    assert by_job["will_fail_permanently"]["type"] == "invalid_operation"
    tokens = product.http.get("/stats").json()["tokens"]
    assert tokens["cpu_units"]["used"] == 0
    assert tokens["memory_mb"]["used"] == 0


def test_scenario_5_with_short_timeout(product: Product) -> None:
    check_scenario(product, shrunk(SCENARIO), settle_timeout=45)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_scenario_5_verbatim(product: Product) -> None:
    # will_timeout: two attempts of 60 s, a 1 s backoff between them: about two minutes
    check_scenario(product, SCENARIO, settle_timeout=240)


def test_time_limit_frees_the_worker_at_once(start_product: StartProduct) -> None:
    # Given a worker with a single thread
    product = start_product(workers=1, threads=1)
    # When a job whose handler would run 30 s has a 0.5 s limit, and another job waits behind
    stuck = product.submit(
        {
            "type": "long_running",
            "payload": {"duration_seconds": 30},
            "timeout_seconds": 0.5,
            "retry_config": {"max_attempts": 1},
        }
    )["job_id"]
    behind = product.submit({"type": "noop"})["job_id"]
    jobs = product.wait_all_terminal([stuck, behind], timeout=20)

    # Then the first fails on its time limit and the next starts on the same thread at once
    assert jobs[stuck]["status"] == "failed"
    assert jobs[behind]["status"] == "completed"
    started = datetime.fromisoformat(jobs[stuck]["started_at"])
    next_started = datetime.fromisoformat(jobs[behind]["started_at"])
    # (2.5 s leaves room for a busy machine; a handler left running would hold it for 30 s)
    assert 0.5 <= seconds(next_started - started) <= 2.5
    # and the logs record a timeout
    end = attempt_ends(logs(product, stuck))[1]
    assert (end["data"]["result"], end["data"]["status"]) == ("timeout", "failed")
    assert "timed out after 0.5 s" in end["message"]
    letters = product.http.get("/dead-letters").json()["items"]
    assert [(d["job_id"], d["reason"]) for d in letters] == [(stuck, "timeout")]
