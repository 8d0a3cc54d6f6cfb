"""Scenarios 2 and 3 and the circular-dependency bonus (tests/scenarios/*.json, verbatim)
end to end: real api, RabbitMQ, PostgreSQL and two worker processes."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from taskq_client.checks import dependency_order_violations, overlap, transitions
from tests.support.product import Product
from tests.support.scenarios import load_scenario

SCENARIO_2 = load_scenario("2_simple_dependencies")
SCENARIO_3 = load_scenario("3_complex_dag")
BONUS = load_scenario("bonus_circular_dependencies")

Jobs = dict[str, dict[str, Any]]


def _submit_batch(product: Product, jobs: list[dict[str, Any]]) -> list[str]:
    response = product.http.post("/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 201, response.text
    return [item["job_id"] for item in response.json()["items"]]


def _with_payload(jobs: list[dict[str, Any]], **payload: Any) -> list[dict[str, Any]]:
    """A copy of the scenario's jobs with keys added to every payload."""
    changed = copy.deepcopy(jobs)
    for job in changed:
        job["payload"] = {**job.get("payload", {}), **payload}
    return changed


def _assert_ran_in_dependency_order(submitted: list[dict[str, Any]], jobs: Jobs) -> None:
    """Every job completed, and started only after each of its dependencies finished."""
    assert dependency_order_violations(submitted, jobs) == []
    for spec in submitted:
        assert jobs[spec["job_id"]]["depends_on"] == spec.get("depends_on", [])


def _transitions(product: Product, job_id: str) -> list[tuple[str | None, str]]:
    return transitions(product.http.get(f"/jobs/{job_id}/logs").json()["items"])


# --- scenario 2: a chain of three, priorities against the dependency order -----------------


@pytest.mark.parametrize("submission", ["batch", "single_posts"])
def test_scenario_2_runs_in_dependency_order_and_shows_blocked_jobs(
    start_product,  # type: ignore[no-untyped-def]
    submission: str,
) -> None:
    # Given two worker processes, the scheduler paused so the waiting states can be read
    product: Product = start_product(workers=2)
    product.http.post("/scheduler/pause")
    fetch, process, report = (job["job_id"] for job in SCENARIO_2["jobs"])

    # When the scenario's jobs are submitted verbatim, as one batch or one by one in order
    if submission == "batch":
        _submit_batch(product, SCENARIO_2["jobs"])
    else:
        for job in SCENARIO_2["jobs"]:
            assert product.http.post("/jobs", json=job).status_code == 201

    # Then the first is ready and the others are blocked, each by its parent
    assert product.job(fetch)["status"] == "pending"
    for job_id, parent in ((process, fetch), (report, process)):
        job = product.job(job_id)
        assert job["status"] == "blocked"
        assert job["blocked_by"] == [parent] and job["waiting_reason"] == "dependencies"
    assert product.job(fetch)["dependents"] == [process]

    # When the scheduler resumes
    product.http.post("/scheduler/resume")
    jobs = product.wait_all_terminal([fetch, process, report], timeout=60)

    # Then all completed, each after its dependency, whatever its priority
    _assert_ran_in_dependency_order(SCENARIO_2["jobs"], jobs)
    assert all(job["blocked_by"] == [] for job in jobs.values())
    # and the dependents went blocked -> pending only once their parent completed
    for job_id in (process, report):
        assert _transitions(product, job_id) == [
            (None, "blocked"),
            ("blocked", "pending"),
            ("pending", "running"),
            ("running", "completed"),
        ]


def test_scenario_2_a_failing_parent_cancels_its_dependents_which_never_run(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given two worker processes and scenario 2 with fetch_data_001 made to fail
    product: Product = start_product(workers=2)
    jobs_in = copy.deepcopy(SCENARIO_2["jobs"])
    jobs_in[0]["payload"]["error"] = "boom"
    fetch, process, report = (job["job_id"] for job in jobs_in)

    # When it is submitted
    _submit_batch(product, jobs_in)
    jobs = product.wait_all_terminal([fetch, process, report], timeout=60)

    # Then the fetch failed and every transitive dependent was cancelled because of it
    assert jobs[fetch]["status"] == "failed"
    assert jobs[fetch]["last_error"] and "boom" in jobs[fetch]["last_error"]
    for job_id in (process, report):
        job = jobs[job_id]
        assert job["status"] == "cancelled"
        assert job["cancel_reason"] == f"upstream_failed:{fetch}"
        # without ever starting
        assert job["started_at"] is None and job["attempts"] == 0
        assert _transitions(product, job_id) == [(None, "blocked"), ("blocked", "cancelled")]


# --- scenario 3: a diamond of diamonds, independent branches in parallel -------------------


def test_scenario_3_verbatim_every_job_starts_after_all_its_dependencies(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given two worker processes
    product: Product = start_product(workers=2)

    # When scenario 3 is submitted verbatim
    ids = _submit_batch(product, SCENARIO_3["jobs"])
    jobs = product.wait_all_terminal(ids, timeout=60)

    # Then every job completed after all its dependencies (analyze_market is critical,
    # yet waits for both fetches; send_notifications waits for both reports)
    _assert_ran_in_dependency_order(SCENARIO_3["jobs"], jobs)
    assert product.job("analyze_market")["dependents"] == ["trader_report", "risk_report"]


def test_scenario_3_independent_branches_run_in_parallel(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given two worker processes, and scenario 3 with every job lasting 0.5 s
    product: Product = start_product(workers=2)
    jobs_in = _with_payload(SCENARIO_3["jobs"], duration_seconds=0.5)

    # When it is submitted
    ids = _submit_batch(product, jobs_in)
    jobs = product.wait_all_terminal(ids, timeout=60)

    # Then the dependency order holds
    _assert_ran_in_dependency_order(jobs_in, jobs)
    # and the two fetches ran at the same time, as did the two reports
    assert overlap(jobs["fetch_prices"], jobs["fetch_volumes"])
    assert overlap(jobs["trader_report"], jobs["risk_report"])


# --- bonus: a cycle is rejected, naming it --------------------------------------------------


def test_bonus_a_circular_dependency_is_rejected_naming_the_cycle_and_nothing_is_stored(
    product: Product,
) -> None:
    # Given the shared product (api and two worker processes) with nothing stored

    # When the bonus scenario's jobs are submitted verbatim as one batch
    response = product.http.post("/jobs/batch", json={"jobs": BONUS["jobs"]})

    # Then it is a 422 dependency_cycle
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "dependency_cycle"
    # naming a real cycle of the submitted graph, through all three jobs
    cycle = error["details"]["cycle"]
    depends_on = {job["job_id"]: job["depends_on"] for job in BONUS["jobs"]}
    assert cycle[0] == cycle[-1] and len(cycle) == 4
    assert sorted(cycle[:-1]) == ["job_a", "job_b", "job_c"]
    for job_id, dependency in itertools.pairwise(cycle):
        assert dependency in depends_on[job_id], f"{job_id} does not depend on {dependency}"
    assert cycle == ["job_a", "job_c", "job_b", "job_a"]  # the walk starts at the first job
    assert "job_a -> job_c -> job_b -> job_a" in error["message"]
    # and nothing is stored
    assert product.http.get("/jobs").json()["items"] == []
    for job_id in depends_on:
        assert product.http.get(f"/jobs/{job_id}").status_code == 404
