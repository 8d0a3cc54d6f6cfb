"""POST /jobs/batch: one atomic submission of up to 10,000 jobs forming a dependency graph.

Every rejection must leave nothing behind; accepted graphs may reference jobs earlier or
later in the batch and jobs stored before it.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.product import Product

MAX_BATCH = 10_000


def _stored_ids(product: Product) -> set[str]:
    """Every stored job id, through GET /jobs pages."""
    ids: set[str] = set()
    cursor: str | None = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = product.http.get("/jobs", params=params).json()
        ids |= {item["job_id"] for item in page["items"]}
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("more pages than expected")


def _post_batch(product: Product, jobs: list[dict[str, Any]]) -> httpx.Response:
    return product.http.post("/jobs/batch", json={"jobs": jobs})


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return dict(error)


def test_a_batch_may_reference_later_and_earlier_jobs_and_reports_each_job(
    product: Product,
) -> None:
    # Given a paused scheduler, so statuses stay as submitted
    product.http.post("/scheduler/pause")

    # When a batch names a later job of the batch, an earlier one, and both
    response = _post_batch(
        product,
        [
            {"job_id": "report", "depends_on": ["fetch", "clean"]},
            {"job_id": "fetch"},
            {"job_id": "clean", "depends_on": ["fetch"]},
        ],
    )

    # Then it is accepted, answered in submission order with each job's status
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [(i["job_id"], i["status"]) for i in items] == [
        ("report", "blocked"),
        ("fetch", "pending"),
        ("clean", "blocked"),
    ]
    # and GET /jobs/{id} shows both directions of the graph and what still blocks it
    report = product.job("report")
    assert report["depends_on"] == ["fetch", "clean"]
    assert report["blocked_by"] == ["fetch", "clean"]
    assert report["waiting_reason"] == "dependencies"
    fetch = product.job("fetch")
    assert fetch["dependents"] == ["report", "clean"]
    assert fetch["depends_on"] == [] and fetch["blocked_by"] == []

    # When the scheduler resumes, everything runs in dependency order
    product.http.post("/scheduler/resume")
    jobs = product.wait_all_terminal(["report", "fetch", "clean"], timeout=30)
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert jobs["fetch"]["finished_at"] <= jobs["clean"]["started_at"]
    assert jobs["clean"]["finished_at"] <= jobs["report"]["started_at"]
    assert product.job("report")["blocked_by"] == []


def test_an_unknown_dependency_is_named_and_nothing_is_stored(product: Product) -> None:
    # Given one stored job
    product.submit({"job_id": "stored"})

    # When a batch depends on it and on a job that exists nowhere
    response = _post_batch(
        product,
        [
            {"job_id": "a", "depends_on": ["stored"]},
            {"job_id": "b", "depends_on": ["a", "ghost_job"]},
        ],
    )

    # Then 422 unknown_dependency names the missing id and the job that needs it
    error = _error(response, 422, "unknown_dependency")
    assert "ghost_job" in error["message"]
    assert error["details"] == {"unknown": {"b": ["ghost_job"]}}
    # and nothing of the batch is stored
    assert _stored_ids(product) == {"stored"}


def test_duplicate_ids_in_a_batch_are_rejected_and_nothing_is_stored(product: Product) -> None:
    # When one batch uses the same job_id twice
    response = _post_batch(product, [{"job_id": "twin"}, {"job_id": "solo"}, {"job_id": "twin"}])

    # Then it is a duplicate_job_id conflict naming it, and nothing is stored
    error = _error(response, 409, "duplicate_job_id")
    assert error["details"] == {"job_ids": ["twin"]}
    assert _stored_ids(product) == set()


def test_an_id_that_exists_already_is_a_conflict_and_nothing_is_stored(product: Product) -> None:
    # Given a stored job
    product.submit({"job_id": "taken"})

    # When a batch reuses its id next to new jobs
    response = _post_batch(product, [{"job_id": "fresh"}, {"job_id": "taken"}])

    # Then 409 duplicate_job_id names it, and nothing of the batch is stored
    error = _error(response, 409, "duplicate_job_id")
    assert error["details"] == {"job_ids": ["taken"]}
    assert _stored_ids(product) == {"taken"}


def test_the_same_batch_sent_again_answers_the_stored_jobs(product: Product) -> None:
    # Given a stored batch (its answer lost, say), the scheduler paused so nothing runs
    product.http.post("/scheduler/pause")
    jobs: list[dict[str, Any]] = [
        {"job_id": "child", "depends_on": ["parent"]},
        {"job_id": "parent"},
    ]
    first = _post_batch(product, jobs)
    assert first.status_code == 201, first.text

    # When the same batch is sent again
    again = _post_batch(product, jobs)

    # Then it answers 200 with the stored jobs, in the batch's order, and stores nothing more
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert _stored_ids(product) == {"child", "parent"}


def test_the_same_batch_sent_twice_at_once_is_stored_once(product: Product) -> None:
    # Given a batch big enough that two copies of it overlap in PostgreSQL
    product.http.post("/scheduler/pause")
    jobs: list[dict[str, Any]] = [{"job_id": f"twice_{n}"} for n in range(2_000)]

    # When two clients send it at the same moment
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _post_batch(product, jobs), range(2)))

    # Then one stores it (201) and the other gets the stored jobs (200), whichever of the
    # duplicate checks it met (the ids already read as taken, or the primary key)
    assert sorted(a.status_code for a in answers) == [200, 201], [a.text[:200] for a in answers]
    assert answers[0].json() == answers[1].json()
    assert len(_stored_ids(product)) == 2_000


def test_the_same_ids_with_other_bodies_are_a_conflict_naming_them(product: Product) -> None:
    # Given a stored batch
    product.http.post("/scheduler/pause")
    assert _post_batch(product, [{"job_id": "a"}, {"job_id": "b"}]).status_code == 201

    # When its ids come again, one of them with another body
    response = _post_batch(product, [{"job_id": "a"}, {"job_id": "b", "priority": "high"}])

    # Then 409 idempotency_conflict names that job, and the stored one is unchanged
    error = _error(response, 409, "idempotency_conflict")
    assert error["details"] == {"job_ids": ["b"]}
    assert product.http.get("/jobs/b").json()["priority"] == "normal"


@pytest.mark.parametrize(
    ("jobs", "cycle_members"),
    [
        pytest.param([{"job_id": "self", "depends_on": ["self"]}], {"self"}, id="self"),
        pytest.param(
            [
                {"job_id": "root"},
                {"job_id": "x", "depends_on": ["root", "y"]},
                {"job_id": "y", "depends_on": ["x"]},
            ],
            {"x", "y"},
            id="two-cycle-below-a-root",
        ),
    ],
)
def test_a_cycle_is_rejected_naming_it_and_nothing_is_stored(
    product: Product, jobs: list[dict[str, Any]], cycle_members: set[str]
) -> None:
    # When a batch holds a cycle
    response = _post_batch(product, jobs)

    # Then 422 dependency_cycle lists a closed walk along depends_on edges
    error = _error(response, 422, "dependency_cycle")
    cycle = error["details"]["cycle"]
    assert cycle[0] == cycle[-1] and set(cycle) == cycle_members
    depends_on = {j["job_id"]: j.get("depends_on", []) for j in jobs}
    assert all(b in depends_on[a] for a, b in itertools.pairwise(cycle))
    assert " -> ".join(cycle) in error["message"]
    assert _stored_ids(product) == set()


def test_more_than_10000_jobs_are_rejected_and_nothing_is_stored(product: Product) -> None:
    # When a batch holds one job more than the limit
    response = _post_batch(product, [{"job_id": f"j{i}"} for i in range(MAX_BATCH + 1)])

    # Then it is invalid, and nothing is stored
    _error(response, 422, "validation_error")
    assert _stored_ids(product) == set()


def test_exactly_10000_jobs_in_one_chain_are_accepted(product: Product) -> None:
    # Given a paused scheduler (this test is about acceptance, not execution)
    product.http.post("/scheduler/pause")

    # When a batch of the maximum size forms one long chain, listed last job first
    jobs = [{"job_id": f"n{i}", "depends_on": [f"n{i - 1}"] if i else []} for i in range(MAX_BATCH)]
    response = _post_batch(product, list(reversed(jobs)))

    # Then all of it is stored: the head is ready, the rest wait for their predecessor
    assert response.status_code == 201, response.text
    statuses = {i["job_id"]: i["status"] for i in response.json()["items"]}
    assert len(statuses) == MAX_BATCH
    assert statuses.pop("n0") == "pending"
    assert set(statuses.values()) == {"blocked"}
    assert product.job(f"n{MAX_BATCH - 1}")["blocked_by"] == [f"n{MAX_BATCH - 2}"]


def test_an_invalid_job_anywhere_rejects_the_whole_batch(product: Product) -> None:
    # When the last job of a batch could never run (more CPU than the pool has)
    response = _post_batch(
        product,
        [
            {"job_id": "fine"},
            {"job_id": "greedy", "resource_requirements": {"cpu_units": 10_000}},
        ],
    )

    # Then the whole batch is rejected and nothing is stored
    _error(response, 422, "exceeds_capacity")
    assert _stored_ids(product) == set()


def test_a_dependency_on_a_completed_job_is_already_met(product: Product) -> None:
    # Given a stored job that completed
    product.submit({"job_id": "done"})
    product.wait_for_status("done", "completed")

    # When a batch depends on it
    response = _post_batch(product, [{"job_id": "next", "depends_on": ["done"]}])

    # Then the new job is ready at once, and runs
    assert response.status_code == 201, response.text
    assert response.json()["items"][0]["status"] in {"pending", "running", "completed"}
    job = product.wait_for_status("next", "completed")
    assert job["depends_on"] == ["done"] and job["blocked_by"] == []
    assert product.job("done")["dependents"] == ["next"]


@pytest.mark.parametrize(
    ("upstream", "end", "reason"),
    [
        pytest.param({"payload": {"error": "boom"}}, "failed", "upstream_failed", id="failed"),
        pytest.param(
            {"run_at": "2999-01-01T00:00:00Z"}, "cancelled", "upstream_cancelled", id="cancelled"
        ),
    ],
)
def test_a_dependency_on_a_dead_job_cancels_the_new_job_and_its_batch_dependents(
    product: Product, upstream: dict[str, Any], end: str, reason: str
) -> None:
    # Given a stored job that ended failed or cancelled
    product.submit({"job_id": "dead", **upstream})
    if end == "cancelled":
        assert product.http.patch("/jobs/dead/cancel").status_code == 200
    product.wait_for_status("dead", end)

    # When a batch depends on it directly, and through another job of the batch
    response = _post_batch(
        product,
        [
            {"job_id": "direct", "depends_on": ["dead"]},
            {"job_id": "indirect", "depends_on": ["direct"]},
            {"job_id": "bystander"},
        ],
    )

    # Then both dependents are cancelled at once, naming the dead job; the rest runs
    assert response.status_code == 201, response.text
    statuses = {i["job_id"]: i["status"] for i in response.json()["items"]}
    assert statuses["direct"] == statuses["indirect"] == "cancelled"
    for job_id in ("direct", "indirect"):
        job = product.job(job_id)
        assert job["cancel_reason"] == f"{reason}:dead", job_id
        assert job["started_at"] is None and job["attempts"] == 0
    assert product.wait_for_status("bystander", "completed")


def test_a_dependency_listed_twice_counts_once(product: Product) -> None:
    # When a job names the same dependency twice, in a batch and in a single submission
    response = _post_batch(
        product, [{"job_id": "up"}, {"job_id": "down", "depends_on": ["up", "up"]}]
    )
    assert response.status_code == 201, response.text
    product.submit({"job_id": "single", "depends_on": ["down", "down"]})

    # Then each runs once its dependency completed, instead of waiting forever
    jobs = product.wait_all_terminal(["up", "down", "single"], timeout=30)
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert product.job("down")["depends_on"] == ["up"]


@pytest.mark.parametrize("parent_state", ["pending", "running"])
def test_cancelling_a_job_cancels_every_transitive_dependent(
    product: Product, parent_state: str
) -> None:
    # Given a parent with a child and a grandchild, the parent waiting or running
    if parent_state == "pending":
        product.http.post("/scheduler/pause")
    response = _post_batch(
        product,
        [
            {"job_id": "grandchild", "depends_on": ["child"]},
            {"job_id": "child", "depends_on": ["parent"]},
            {"job_id": "parent", "payload": {"duration_seconds": 30}},
        ],
    )
    assert response.status_code == 201, response.text
    product.wait_for_status("parent", parent_state)

    # When the parent is cancelled
    cancel = product.http.patch("/jobs/parent/cancel")
    assert cancel.status_code == (200 if parent_state == "pending" else 202), cancel.text
    product.wait_for_status("parent", "cancelled", timeout=15)

    # Then its transitive dependents are cancelled because of it, without ever starting
    for job_id in ("child", "grandchild"):
        job = product.wait_for_status(job_id, "cancelled", timeout=15)
        assert job["cancel_reason"] == "upstream_cancelled:parent", job
        assert job["started_at"] is None and job["attempts"] == 0
