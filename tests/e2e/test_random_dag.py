"""Randomized dependency graphs end to end: seeded DAGs of a few hundred jobs with random
priorities, resources and injected failures, run by the real api and two worker processes.

Whatever the shape, every edge must be respected, every descendant of a failure cancelled
(and never started), every job must end in a terminal status, and every status change the
job's event log records must be one the state machine allows, each following the last.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from queue_service.model import JobStatus, can_transition
from tests.support.product import Product, wait_until

JOBS = 240
FAILURE_RATE = 0.05
PRIORITIES = ["critical", "high", "normal", "low"]
TYPES = ["noop", "quick_task", "data_fetch", "analysis", "notification"]
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass(frozen=True)
class RandomDag:
    bodies: list[dict[str, Any]]  # in topological order
    parents: dict[str, list[str]]
    expected: dict[str, str]  # final status per job
    ancestors: dict[str, set[str]]


def random_dag(seed: int, size: int) -> RandomDag:
    """Job i depends on up to 3 of jobs 0..i-1 (so the graph is acyclic); about 5% fail."""
    rng = random.Random(seed)
    ids = [f"r{seed}_{i:04d}" for i in range(size)]
    bodies: list[dict[str, Any]] = []
    parents: dict[str, list[str]] = {}
    expected: dict[str, str] = {}
    ancestors: dict[str, set[str]] = {}
    for i, job_id in enumerate(ids):
        deps = rng.sample(ids[:i], k=min(i, rng.choice([0, 1, 1, 2, 2, 3])))
        fails = rng.random() < FAILURE_RATE
        payload: dict[str, Any] = {"duration_seconds": round(rng.uniform(0.01, 0.05), 3)}
        if fails:
            payload["error"] = f"injected failure of {job_id}"
        bodies.append(
            {
                "job_id": job_id,
                "type": rng.choice(TYPES),
                "priority": rng.choice(PRIORITIES),
                "payload": payload,
                "resource_requirements": {
                    "cpu_units": rng.randint(1, 4),
                    "memory_mb": rng.choice([64, 128, 512, 1024, 2048]),
                },
                "depends_on": deps,
            }
        )
        parents[job_id] = deps
        ancestors[job_id] = set(deps).union(*(ancestors[d] for d in deps))
        if any(expected[d] != "completed" for d in deps):
            expected[job_id] = "cancelled"
        else:
            expected[job_id] = "failed" if fails else "completed"
    return RandomDag(bodies, parents, expected, ancestors)


def _all_jobs(product: Product) -> dict[str, dict[str, Any]]:
    page = product.http.get("/jobs", params={"limit": 500}).json()
    assert page["next_cursor"] is None
    return {item["job_id"]: item for item in page["items"]}


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _batches(dag: RandomDag, seed: int, count: int) -> list[list[dict[str, Any]]]:
    """Split the DAG into `count` consecutive batches, each shuffled so that dependencies
    may come later in a batch than their dependents."""
    size = -(-len(dag.bodies) // count)
    batches = [dag.bodies[i : i + size] for i in range(0, len(dag.bodies), size)]
    for batch in batches:
        random.Random(seed).shuffle(batch)
    return batches


@pytest.mark.parametrize(
    ("seed", "batches"),
    [
        pytest.param(20240601, 1, id="one-batch"),
        # The second batch depends on stored jobs while they run, complete or fail.
        pytest.param(7, 2, id="two-batches-back-to-back"),
    ],
)
def test_random_dag_respects_every_edge_and_cancels_every_descendant_of_a_failure(
    product: Product, engine: sa.Engine, seed: int, batches: int
) -> None:
    # Given a seeded random DAG with some failing jobs
    dag = random_dag(seed, JOBS)
    failing = {j for j, status in dag.expected.items() if status == "failed"}
    doomed = {j for j, status in dag.expected.items() if status == "cancelled"}
    assert failing and doomed, "the seed should produce failures with descendants"

    # When it is submitted in batches, one right after the other
    for batch in _batches(dag, seed, batches):
        response = product.http.post("/jobs/batch", json={"jobs": batch})
        assert response.status_code == 201, response.text

    # Then every job ends terminal
    jobs = wait_until(
        lambda: (
            (jobs := _all_jobs(product))
            and len(jobs) == JOBS
            and all(j["status"] in TERMINAL for j in jobs.values())
            and jobs
        ),
        timeout=90,
        interval=0.25,
        message="every job to be terminal",
    )
    # with exactly the statuses the graph implies
    actual = {job_id: job["status"] for job_id, job in jobs.items()}
    wrong = {j: (actual[j], dag.expected[j]) for j in dag.expected if actual[j] != dag.expected[j]}
    assert not wrong, f"(actual, expected): {wrong}"

    for job_id, job in jobs.items():
        if job["status"] == "completed":
            # every edge respected: started after each dependency finished
            assert job["attempts"] == 1
            for parent in dag.parents[job_id]:
                assert _at(job["started_at"]) >= _at(jobs[parent]["finished_at"]), (
                    f"{job_id} started before its dependency {parent} finished"
                )
        elif job["status"] == "failed":
            assert job["attempts"] == 1 and "injected failure" in job["last_error"]
        else:
            # cancelled because of a failed ancestor, never started
            assert job["started_at"] is None and job["attempts"] == 0, job
            kind, _, root = job["cancel_reason"].partition(":")
            assert root in dag.ancestors[job_id], job
            # (a job submitted after its dependency was cancelled names that dependency)
            assert (kind, root in failing) in {
                ("upstream_failed", True),
                ("upstream_cancelled", False),
            }, job
    # and every token went back to the pool
    tokens = product.http.get("/stats").json()["tokens"]
    assert tokens["cpu_units"]["used"] == 0 and tokens["memory_mb"]["used"] == 0
    # and each job's status events form one chain of allowed transitions, from its
    # submission to the status it ended in
    assert not status_chain_breaks(engine, actual), status_chain_breaks(engine, actual)


def status_chain_breaks(engine: sa.Engine, final: dict[str, str]) -> list[str]:
    """What is wrong with the status events of these jobs: a transition the state machine
    forbids, one that does not start where the previous ended, or a last status that is
    not the job's."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT job_id, previous_status, status FROM job_events "
                "WHERE job_id = ANY(:ids) AND status IS NOT NULL ORDER BY job_id, id"
            ),
            {"ids": list(final)},
        ).all()
    breaks: list[str] = []
    current: dict[str, str | None] = {}
    for job_id, previous, status in rows:
        if job_id in current and previous != current[job_id]:
            breaks.append(f"{job_id}: {previous} -> {status} after {current[job_id]}")
        elif previous is not None and not can_transition(JobStatus(previous), JobStatus(status)):
            breaks.append(f"{job_id}: {previous} -> {status} is not allowed")
        current[job_id] = status
    breaks += [
        f"{job_id}: events end at {current.get(job_id)}, the job is {status}"
        for job_id, status in final.items()
        if current.get(job_id) != status
    ]
    return breaks
