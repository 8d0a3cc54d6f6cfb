"""The HTTP contract of SPEC "HTTP API", against the real api and worker processes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from api.schemas import POSITION_CAP
from tests.support.product import Product

SPEC_JOB_TYPES = {
    "noop",
    "send_email",
    "data_export",
    "generate_report",
    "report_generation",
    "report",
    "data_fetch",
    "data_processing",
    "analysis",
    "notification",
    "quick_task",
    "external_api",
    "processing",
    "long_running",
    "invalid_operation",
}
STATUSES = {
    "blocked",
    "scheduled",
    "pending",
    "running",
    "retrying",
    "completed",
    "failed",
    "cancelled",
}
PRIORITIES = {"critical", "high", "normal", "low"}
GENERATED_ID = re.compile(r"^job_[0-9A-Za-z]{26}$")


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def listed_ids(http: httpx.Client, **params: Any) -> set[str]:
    response = http.get("/jobs", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return {item["job_id"] for item in response.json()["items"]}


# --- POST /jobs ----------------------------------------------------------------------------


def test_submit_answers_201_with_summary_and_location(product: Product) -> None:
    # Given a running product
    # When a job is submitted with nothing but a type
    response = product.http.post("/jobs", json={"type": "send_email"})

    # Then it is accepted with its summary and where to find it
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"job_id", "status", "created_at", "priority", "position_in_queue"}
    assert body["status"] in {"pending", "running", "completed"}
    assert body["priority"] == "normal"
    assert at(body["created_at"]).tzinfo is not None
    assert response.headers["location"] == f"/jobs/{body['job_id']}"
    # and the location serves the job
    assert product.http.get(response.headers["location"]).json()["job_id"] == body["job_id"]


def test_generated_ids_are_job_and_26_characters_and_unique(product: Product) -> None:
    # Given a running product
    # When jobs are submitted without ids, one by one and in a batch
    single = [product.submit({})["job_id"] for _ in range(5)]
    batch = product.http.post("/jobs/batch", json={"jobs": [{}] * 5})
    assert batch.status_code == 201, batch.text
    ids = single + [item["job_id"] for item in batch.json()["items"]]

    # Then every id is `job_` and 26 characters, and no two are alike
    assert all(GENERATED_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_client_chosen_id_is_kept(product: Product) -> None:
    # Given a client-chosen id using every allowed character class, at the maximum length
    job_id = ("Fetch.data:001-x_" * 8)[:128]

    # When it is submitted
    response = product.http.post("/jobs", json={"job_id": job_id})

    # Then the job has exactly that id
    assert response.status_code == 201, response.text
    assert response.json()["job_id"] == job_id
    assert product.job(job_id)["job_id"] == job_id


def test_defaults_are_applied(product: Product) -> None:
    # Given a running product
    # When an empty submission arrives
    job_id = product.submit({})["job_id"]

    # Then the job has SPEC's defaults
    job = product.job(job_id)
    assert job["type"] == "noop"
    assert job["priority"] == "normal"
    assert job["payload"] == {}
    assert job["resource_requirements"] == {"cpu_units": 1, "memory_mb": 128}
    assert job["retry_config"] == {
        "max_attempts": 3,
        "backoff_multiplier": 2.0,
        "initial_delay_seconds": 1.0,
        "max_delay_seconds": 300.0,
    }
    assert job["max_attempts"] == 3
    assert job["timeout_seconds"] == 300.0
    assert job["depends_on"] == []
    assert job["run_at"] is None
    assert job["idempotency_key"] is None


def test_repeated_submission_returns_the_original_and_a_different_body_conflicts(
    product: Product,
) -> None:
    # Given a job submitted under a client id and one under an Idempotency-Key header
    body = {"job_id": "charge_42", "type": "send_email", "payload": {"to": "a@example.com"}}
    first = product.http.post("/jobs", json=body)
    keyed = product.http.post("/jobs", json={"type": "noop"}, headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, keyed.status_code) == (201, 201)

    # When each is submitted again, the same and then different
    again = product.http.post("/jobs", json=body)
    keyed_again = product.http.post(
        "/jobs", json={"type": "noop"}, headers={"Idempotency-Key": "k-1"}
    )
    changed = product.http.post("/jobs", json={**body, "payload": {"to": "b@example.com"}})
    keyed_changed = product.http.post(
        "/jobs", json={"type": "send_email"}, headers={"Idempotency-Key": "k-1"}
    )

    # Then the same body answers 200 with the original, a different one 409
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == "charge_42"
    assert again.json()["created_at"] == first.json()["created_at"]
    assert keyed_again.status_code == 200, keyed_again.text
    assert keyed_again.json()["job_id"] == keyed.json()["job_id"]
    assert changed.status_code == 409
    assert changed.json()["error"]["code"] == "idempotency_conflict"
    assert keyed_changed.status_code == 409
    assert keyed_changed.json()["error"]["code"] == "idempotency_conflict"
    # and only the two originals exist
    assert listed_ids(product.http) == {"charge_42", keyed.json()["job_id"]}


def test_position_in_queue_counts_ready_jobs_ranked_ahead(product: Product) -> None:
    # Given a paused scheduler, so submitted jobs stay ready
    product.http.post("/scheduler/pause")

    # When three normal jobs and then a critical one are submitted
    normal = [product.submit({"priority": "normal"}) for _ in range(3)]
    critical = product.submit({"priority": "critical"})

    # Then each normal one has the earlier ones ahead, and the critical one none
    assert [j["position_in_queue"] for j in normal] == [0, 1, 2]
    assert critical["position_in_queue"] == 0


def test_position_in_queue_is_capped_behind_a_long_backlog(product: Product) -> None:
    # Given a paused scheduler and more ready normal jobs than the cap
    product.http.post("/scheduler/pause")
    batch = product.http.post(
        "/jobs/batch", json={"jobs": [{"priority": "normal"}] * (POSITION_CAP + 5)}
    )
    assert batch.status_code == 201, batch.text

    # When one more normal job and a high one are submitted
    late = product.submit({"priority": "normal"})
    high = product.submit({"priority": "high"})

    # Then the normal one reads "cap or more" and the high one has nobody ahead
    assert late["position_in_queue"] == POSITION_CAP
    assert high["position_in_queue"] == 0


# --- GET /jobs/{id} ------------------------------------------------------------------------

JOB_FIELDS = {
    "job_id",
    "type",
    "priority",
    "status",
    "attempts",
    "payload",
    "resource_requirements",
    "retry_config",
    "timeout_seconds",
    "run_at",
    "created_at",
    "queued_at",
    "started_at",
    "finished_at",
    "next_attempt_at",
    "depends_on",
    "dependents",
    "blocked_by",
    "last_error",
    "cancel_reason",
    "waiting_reason",
}


def test_a_job_shows_every_field_while_waiting_and_when_done(product: Product) -> None:
    # Given a paused scheduler, a ready parent and a child that depends on it
    product.http.post("/scheduler/pause")
    parent = product.submit({"job_id": "parent", "type": "noop"})["job_id"]
    child = product.submit({"job_id": "child", "type": "noop", "depends_on": [parent]})

    # When both are read while they wait
    waiting_parent = product.job(parent)
    waiting_child = product.job("child")

    # Then every field of SPEC is there, with the graph edges and why each one waits
    assert child["status"] == "blocked"
    assert set(waiting_parent) >= JOB_FIELDS
    assert set(waiting_child) >= JOB_FIELDS
    assert waiting_parent["status"] == "pending"
    assert waiting_parent["waiting_reason"] == "paused"
    assert waiting_parent["dependents"] == ["child"]
    assert waiting_parent["depends_on"] == []
    assert waiting_child["status"] == "blocked"
    assert waiting_child["waiting_reason"] == "dependencies"
    assert waiting_child["depends_on"] == [parent]
    assert waiting_child["blocked_by"] == [parent]
    assert waiting_child["attempts"] == 0
    for field in ("queued_at", "started_at", "finished_at", "next_attempt_at", "last_error"):
        assert waiting_child[field] is None, field
    assert waiting_child["cancel_reason"] is None

    # When the scheduler resumes and both finish
    product.http.post("/scheduler/resume")
    done = product.wait_all_terminal([parent, "child"], timeout=30)

    # Then they completed in order, with every timestamp, nothing blocking, no wait reason
    for job in done.values():
        assert job["status"] == "completed"
        assert job["attempts"] == 1
        assert job["waiting_reason"] is None
        assert job["blocked_by"] == []
        created, queued = at(job["created_at"]), at(job["queued_at"])
        started, finished = at(job["started_at"]), at(job["finished_at"])
        assert created <= queued <= started <= finished
    assert at(done[parent]["finished_at"]) <= at(done["child"]["started_at"])


def test_run_at_in_the_future_waits_as_scheduled_then_runs(product: Product) -> None:
    # Given a running product
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)

    # When a job is submitted to run 1.5 s from now
    accepted = product.submit({"type": "noop", "run_at": run_at.isoformat()})

    # Then it is scheduled until then, and says so
    assert accepted["status"] == "scheduled"
    job = product.job(accepted["job_id"])
    assert job["waiting_reason"] == "scheduled"
    assert at(job["run_at"]) == run_at
    assert at(job["next_attempt_at"]) == run_at
    # and once due it becomes pending and runs, not before its time
    done = product.wait_for_status(accepted["job_id"], "completed", timeout=20)
    assert at(done["started_at"]) >= run_at
    assert done["waiting_reason"] is None


# --- GET /jobs -----------------------------------------------------------------------------


def test_list_filters_by_status_type_priority_and_creation_time(product: Product) -> None:
    # Given a paused scheduler and jobs of several statuses, types and priorities
    product.http.post("/scheduler/pause")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    submitted = [
        product.submit({"job_id": "n1", "type": "noop", "priority": "normal"}),
        product.submit({"job_id": "e1", "type": "send_email", "priority": "high"}),
        product.submit({"job_id": "e2", "type": "send_email", "priority": "low"}),
        product.submit({"job_id": "s1", "type": "noop", "priority": "critical", "run_at": later}),
        product.submit({"job_id": "b1", "type": "report", "depends_on": ["n1"]}),
    ]
    created = {j["job_id"]: j["created_at"] for j in submitted}
    http = product.http

    # When the list is filtered, Then it holds exactly the matching jobs
    assert listed_ids(http) == {"n1", "e1", "e2", "s1", "b1"}
    assert listed_ids(http, status="pending") == {"n1", "e1", "e2"}
    assert listed_ids(http, status="scheduled") == {"s1"}
    assert listed_ids(http, status="blocked") == {"b1"}
    assert listed_ids(http, status="completed") == set()
    assert listed_ids(http, type="send_email") == {"e1", "e2"}
    assert listed_ids(http, type="report") == {"b1"}
    assert listed_ids(http, priority="high") == {"e1"}
    assert listed_ids(http, priority="normal") == {"n1", "b1"}
    assert listed_ids(http, status="pending", type="send_email", priority="low") == {"e2"}
    # and creation-time bounds are exclusive
    assert listed_ids(http, created_after=created["e1"]) == {"e2", "s1", "b1"}
    assert listed_ids(http, created_before=created["e2"]) == {"n1", "e1"}
    assert listed_ids(http, created_after=created["e1"], created_before=created["s1"]) == {"e2"}
    # and a summary carries the job's status, type and resources
    item = http.get("/jobs", params={"type": "report"}).json()["items"][0]
    assert item["status"] == "blocked"
    assert item["resource_requirements"] == {"cpu_units": 1, "memory_mb": 128}


def test_cursor_pages_newest_first_without_duplicates_or_gaps(product: Product) -> None:
    # Given 25 jobs: 15 from one batch (same creation time) and 10 submitted one by one
    batch = product.http.post("/jobs/batch", json={"jobs": [{}] * 15})
    assert batch.status_code == 201, batch.text
    ids = [item["job_id"] for item in batch.json()["items"]]
    ids += [product.submit({})["job_id"] for _ in range(10)]

    # When they are read in pages of 10, and a new job arrives after the first page
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    for _ in range(10):  # bounded: 3 pages expected
        params: dict[str, Any] = {"limit": 10}
        if cursor is not None:
            params["cursor"] = cursor
        response = product.http.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append(page["items"])
        if len(pages) == 1:
            newcomer = product.submit({})["job_id"]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Then three pages of 10, 10 and 5 hold every job exactly once, newest first
    assert [len(p) for p in pages] == [10, 10, 5]
    seen = [item["job_id"] for page in pages for item in page]
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == set(ids)
    assert newcomer not in seen
    created = [at(item["created_at"]) for page in pages for item in page]
    assert created == sorted(created, reverse=True)
    # and the 10 single submissions come before the older batch
    assert set(seen[:10]) == set(ids[15:])


# --- other routes --------------------------------------------------------------------------


def test_job_types_lists_the_spec_types_with_defaults(product: Product) -> None:
    # Given a running product
    # When the registry is read
    response = product.http.get("/job-types")

    # Then it has at least SPEC's types, each with its default duration
    assert response.status_code == 200
    items = {item["type"]: item for item in response.json()["items"]}
    assert set(items) >= SPEC_JOB_TYPES
    for item in items.values():
        assert isinstance(item["default_duration_seconds"], int | float)
        assert item["default_duration_seconds"] >= 0
        assert isinstance(item["description"], str)
    assert items["long_running"]["default_duration_seconds"] > 0


def test_health_and_readiness(product: Product) -> None:
    # Given a running product with PostgreSQL and RabbitMQ up
    # When liveness and readiness are probed
    health = product.http.get("/healthz")
    ready = product.http.get("/readyz")

    # Then both answer 200, readiness with the check of each dependency
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"postgresql": "ok", "rabbitmq": "ok"}}


SPEC_ROUTES = {
    ("post", "/jobs"),
    ("post", "/jobs/batch"),
    ("get", "/jobs/{job_id}"),
    ("get", "/jobs"),
    ("patch", "/jobs/{job_id}/cancel"),
    ("get", "/jobs/{job_id}/logs"),
    ("get", "/dead-letters"),
    ("get", "/dead-letters/{dead_letter_id}"),
    ("post", "/dead-letters/{dead_letter_id}/replay"),
    ("delete", "/dead-letters/{dead_letter_id}"),
    ("post", "/scheduler/pause"),
    ("post", "/scheduler/resume"),
    ("get", "/stats"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/job-types"),
    ("get", "/"),
}


def test_openapi_documents_every_route_and_the_error_body(product: Product) -> None:
    # Given a running product
    # When its OpenAPI document is read
    response = product.http.get("/openapi.json")

    # Then every route of SPEC's table is there
    assert response.status_code == 200
    spec = response.json()
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert documented >= SPEC_ROUTES, SPEC_ROUTES - documented
    # and the job fields with their rules
    job_create = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert set(job_create) >= {
        "job_id",
        "type",
        "priority",
        "payload",
        "resource_requirements",
        "depends_on",
        "retry_config",
        "timeout_seconds",
        "run_at",
        "idempotency_key",
    }
    # and the errors of the job routes, as the error body clients receive
    responses = spec["paths"]["/jobs"]["post"]["responses"]
    assert {"404", "409", "413", "422", "503"} <= set(responses)
    schema = responses["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {
        "code",
        "message",
        "details",
    }
    # and the WebSocket stream, which OpenAPI cannot list as a path
    assert "/jobs/stream" in spec["info"]["description"]
    # and /docs serves the interactive page
    assert product.http.get("/docs").status_code == 200


def test_metrics_are_prometheus_text_with_counters_and_pool_gauges(product: Product) -> None:
    # Given two completed jobs
    ids = [product.submit({"type": "noop"})["job_id"] for _ in range(2)]
    product.wait_all_terminal(ids, timeout=30)

    # When Prometheus scrapes the api
    response = product.http.get("/metrics")

    # Then it gets the text format: counters, histograms, gauges per unit
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE taskq_jobs_finished_total counter" in text
    assert "# TYPE taskq_job_run_seconds histogram" in text
    assert "# TYPE taskq_pool_cpu_units gauge" in text
    capacity = product.http.get("/stats").json()["tokens"]["cpu_units"]["capacity"]
    assert f'taskq_pool_cpu_units{{state="capacity"}} {float(capacity)}' in text
    assert 'taskq_pool_memory_bytes{state="used"} 0.0' in text


def test_stats_report_counts_depth_tokens_throughput_and_timings(product: Product) -> None:
    # Given two completed jobs and, with the scheduler paused, one waiting high-priority job
    ids = [product.submit({"type": "noop"})["job_id"] for _ in range(2)]
    product.wait_all_terminal(ids, timeout=30)
    product.http.post("/scheduler/pause")
    product.submit({"priority": "high", "resource_requirements": {"cpu_units": 2}})

    # When the stats are read
    response = product.http.get("/stats")

    # Then they hold every status and priority, tokens, throughput and timings
    assert response.status_code == 200
    stats = response.json()
    assert set(stats["jobs_by_status"]) == STATUSES
    assert stats["jobs_by_status"]["completed"] == 2
    assert stats["jobs_by_status"]["pending"] == 1
    assert stats["jobs_by_status_estimated"] == []  # a small table: every count exact
    assert stats["queue_depth_by_priority"] == {"critical": 0, "high": 1, "normal": 0, "low": 0}
    cpu = stats["tokens"]["cpu_units"]
    memory = stats["tokens"]["memory_mb"]
    assert cpu["used"] == 0 and cpu["free"] == cpu["capacity"] > 0
    assert memory["used"] == 0 and memory["free"] == memory["capacity"] > 0
    assert stats["scheduler_paused"] is True
    assert stats["throughput"]["completed_last_60s"] == 2
    assert stats["throughput"]["per_second"] > 0
    timings = stats["timings_seconds"]
    assert timings["completed"] == 2
    for kind in ("wait", "run"):
        assert set(timings[kind]) == {"p50", "p95", "p99"}
        assert 0 <= timings[kind]["p50"] <= timings[kind]["p95"] <= timings[kind]["p99"]


def test_admin_page_is_html(product: Product) -> None:
    # Given a running product
    # When an operator opens the root page
    response = product.http.get("/")

    # Then it is the console's HTML page, whose script reads the live stream and the stats
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text.lower()
    assert "<html" in page
    script = product.http.get("/static/console.js").text
    assert "/stats/overview" in script
    assert "/jobs/stream" in script


def test_cancel_a_waiting_job_then_cancelling_again_conflicts(product: Product) -> None:
    # Given a waiting job
    product.http.post("/scheduler/pause")
    job_id = product.submit({})["job_id"]

    # When it is cancelled twice
    first = product.http.patch(f"/jobs/{job_id}/cancel")
    second = product.http.patch(f"/jobs/{job_id}/cancel")

    # Then the first cancels it at once, the second is a conflict
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "not_cancellable"
    # and the logs show the transition
    logs = product.http.get(f"/jobs/{job_id}/logs").json()["items"]
    assert [(e["data"].get("previous_status"), e["data"].get("status")) for e in logs] == [
        (None, "pending"),
        ("pending", "cancelled"),
    ]
    assert set(logs[0]) == {"at", "level", "event", "attempt", "message", "data"}
