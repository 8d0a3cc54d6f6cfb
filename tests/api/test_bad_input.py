"""Bad input gets a 4xx JSON error with a stable code, never a 500, and loses nothing.

Every case runs against the real api process (uvicorn, PostgreSQL, RabbitMQ): the error
body is `{"error": {"code", "message", "details"}}` (SPEC "HTTP API").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.product import Product

KIB = 1024


@dataclass(frozen=True)
class BadRequest:
    """One request the api must refuse, and how."""

    method: str
    path: str
    status: int
    code: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def send(self, http: httpx.Client) -> httpx.Response:
        if self.content is not None:
            return http.request(
                self.method,
                self.path,
                content=self.content,
                params=self.params,
                headers={"content-type": "application/json"},
            )
        if self.json is not None:
            return http.request(self.method, self.path, json=self.json, params=self.params)
        return http.request(self.method, self.path, params=self.params)


def submit(body: Any, status: int = 422, code: str = "validation_error") -> BadRequest:
    return BadRequest("POST", "/jobs", status, code, json=body)


def submit_raw(content: bytes, status: int = 422, code: str = "validation_error") -> BadRequest:
    return BadRequest("POST", "/jobs", status, code, content=content)


def list_jobs(params: dict[str, Any], code: str = "validation_error") -> BadRequest:
    return BadRequest("GET", "/jobs", 422, code, params=params)


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_REQUESTS = [
    # Registry and pool
    pytest.param(submit({"type": "no_such_type"}, code="unknown_job_type"), id="unknown-type"),
    pytest.param(submit({"type": ""}, code="unknown_job_type"), id="empty-type"),
    pytest.param(
        submit({"resource_requirements": {"cpu_units": 10_000}}, code="exceeds_capacity"),
        id="cpu-over-capacity",
    ),
    pytest.param(
        submit({"resource_requirements": {"memory_mb": 10_000_000}}, code="exceeds_capacity"),
        id="memory-over-capacity",
    ),
    pytest.param(
        submit({"depends_on": ["no_such_job"]}, code="unknown_dependency"),
        id="unknown-dependency",
    ),
    pytest.param(
        submit({"job_id": "self", "depends_on": ["self"]}, code="dependency_cycle"),
        id="depends-on-itself",
    ),
    # Shape
    pytest.param(submit({"priority": "urgent"}), id="bad-priority"),
    pytest.param(submit({"priority": None}), id="null-priority"),
    pytest.param(submit({"resource_requirements": {"cpu_units": 0}}), id="zero-cpu"),
    pytest.param(submit({"resource_requirements": {"cpu_units": -2}}), id="negative-cpu"),
    pytest.param(submit({"resource_requirements": {"memory_mb": 0}}), id="zero-memory"),
    pytest.param(submit({"resource_requirements": {"memory_mb": -128}}), id="negative-memory"),
    pytest.param(submit({"resource_requirements": {"cpu_units": 1.5}}), id="fractional-cpu"),
    pytest.param(submit({"payload": [1, 2]}), id="payload-not-object"),
    pytest.param(submit({"depends_on": "job_a"}), id="depends-on-not-list"),
    pytest.param(submit({"run_at": "next tuesday"}), id="bad-run-at"),
    pytest.param(submit({"idempotency_key": ""}), id="empty-idempotency-key"),
    # Malformed bodies
    pytest.param(submit_raw(b'{"type": ', 400, "malformed_json"), id="malformed-json"),
    pytest.param(submit_raw(b"{'type': 'noop'}", 400, "malformed_json"), id="single-quotes"),
    pytest.param(
        submit_raw(
            b'{"payload": {"x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}", 400, "malformed_json"
        ),
        id="json-nested-too-deep",
    ),
    pytest.param(submit_raw(b"[1, 2]"), id="body-is-array"),
    pytest.param(submit_raw(b'"noop"'), id="body-is-string"),
    pytest.param(submit_raw(b"42"), id="body-is-number"),
    pytest.param(submit_raw(b"null"), id="body-is-null"),
    # Size
    pytest.param(
        submit({"payload": {"blob": "x" * (64 * KIB)}}, 413, "payload_too_large"),
        id="payload-over-64kib",
    ),
    pytest.param(
        BadRequest(
            "POST",
            "/jobs/batch",
            413,
            "payload_too_large",
            json={"jobs": [{}, {"payload": {"blob": "x" * (64 * KIB)}}]},
        ),
        id="batch-payload-over-64kib",
    ),
    # job_id
    pytest.param(submit({"job_id": "has space"}), id="job-id-space"),
    pytest.param(submit({"job_id": "a/b"}), id="job-id-slash"),
    pytest.param(submit({"job_id": "ünïcode"}), id="job-id-non-ascii"),
    pytest.param(submit({"job_id": ""}), id="job-id-empty"),
    pytest.param(submit({"job_id": "a" * 129}), id="job-id-129-chars"),
    pytest.param(submit({"depends_on": ["bad id"]}), id="dependency-id-bad"),
    # retry_config
    pytest.param(submit({"retry_config": {"max_attempts": 0}}), id="max-attempts-0"),
    pytest.param(submit({"retry_config": {"max_attempts": 101}}), id="max-attempts-101"),
    pytest.param(submit({"retry_config": {"backoff_multiplier": 0.5}}), id="multiplier-below-1"),
    pytest.param(
        submit({"retry_config": {"initial_delay_seconds": -1}}), id="negative-initial-delay"
    ),
    pytest.param(submit({"retry_config": {"max_delay_seconds": -1}}), id="negative-max-delay"),
    pytest.param(submit_raw(b'{"retry_config": {"backoff_multiplier": NaN}}'), id="multiplier-nan"),
    pytest.param(
        submit_raw(b'{"retry_config": {"backoff_multiplier": Infinity}}'), id="multiplier-inf"
    ),
    pytest.param(
        submit_raw(b'{"retry_config": {"initial_delay_seconds": -Infinity}}'),
        id="initial-delay-minus-inf",
    ),
    # timeout_seconds
    pytest.param(submit({"timeout_seconds": 0}), id="timeout-0"),
    pytest.param(submit({"timeout_seconds": -5}), id="timeout-negative"),
    pytest.param(submit_raw(b'{"timeout_seconds": NaN}'), id="timeout-nan"),
    pytest.param(submit_raw(b'{"timeout_seconds": 1e999}'), id="timeout-inf"),
    # Unknown fields, at every level
    pytest.param(submit({"colour": "red"}), id="extra-field"),
    pytest.param(
        submit({"resource_requirements": {"cpu_units": 1, "gpus": 1}}), id="extra-resource"
    ),
    pytest.param(submit({"retry_config": {"jitter": 0.5}}), id="extra-retry-field"),
    # Values PostgreSQL cannot store or compare
    pytest.param(submit({"payload": {"text": "nul\u0000byte"}}), id="payload-nul-char"),
    pytest.param(submit_raw(b'{"payload": {"x": NaN}}'), id="payload-nan"),
    pytest.param(submit_raw(b'{"payload": {"x": -Infinity}}'), id="payload-inf"),
    pytest.param(submit({"idempotency_key": "nul\u0000key"}), id="idempotency-key-nul"),
    pytest.param(submit({"run_at": "9999-12-31T23:59:59-12:00"}), id="run-at-after-9999-utc"),
    pytest.param(submit({"run_at": "0001-01-01T00:00:00+12:00"}), id="run-at-before-year-1"),
    # Batches
    pytest.param(
        BadRequest("POST", "/jobs/batch", 422, "validation_error", json={"jobs": []}),
        id="batch-empty",
    ),
    pytest.param(
        BadRequest("POST", "/jobs/batch", 422, "validation_error", json=[{}]),
        id="batch-not-object",
    ),
    pytest.param(
        BadRequest(
            "POST",
            "/jobs/batch",
            422,
            "dependency_cycle",
            json={
                "jobs": [{"job_id": "x", "depends_on": ["y"]}, {"job_id": "y", "depends_on": ["x"]}]
            },
        ),
        id="batch-cycle",
    ),
    # Unknown jobs and dead letters
    pytest.param(BadRequest("GET", "/jobs/no_such_job", 404, "job_not_found"), id="get-unknown"),
    pytest.param(
        BadRequest("GET", "/jobs/no_such_job/logs", 404, "job_not_found"), id="logs-unknown"
    ),
    pytest.param(
        BadRequest("PATCH", "/jobs/no_such_job/cancel", 404, "job_not_found"),
        id="cancel-unknown",
    ),
    pytest.param(BadRequest("GET", "/jobs/nul%00id", 422, "validation_error"), id="get-nul-id"),
    pytest.param(
        BadRequest("GET", "/dead-letters/987654", 404, "dead_letter_not_found"),
        id="dead-letter-unknown",
    ),
    pytest.param(
        BadRequest("POST", "/dead-letters/987654/replay", 404, "dead_letter_not_found"),
        id="replay-unknown",
    ),
    pytest.param(
        BadRequest("DELETE", "/dead-letters/987654", 404, "dead_letter_not_found"),
        id="discard-unknown",
    ),
    pytest.param(
        BadRequest("GET", "/dead-letters/not-a-number", 422, "validation_error"),
        id="dead-letter-id-not-int",
    ),
    pytest.param(
        BadRequest("GET", f"/dead-letters/{10**30}", 422, "validation_error"),
        id="dead-letter-id-beyond-bigint",
    ),
    # GET /jobs query
    pytest.param(list_jobs({"cursor": "not-a-cursor!"}, "invalid_cursor"), id="cursor-garbage"),
    pytest.param(list_jobs({"cursor": cursor_of([1, 2, 3])}, "invalid_cursor"), id="cursor-shape"),
    pytest.param(
        list_jobs({"cursor": cursor_of(["yesterday", "job_x"])}, "invalid_cursor"),
        id="cursor-bad-time",
    ),
    pytest.param(
        list_jobs({"cursor": cursor_of([[[[[[["x"]]]]]]])}, "invalid_cursor"), id="cursor-nested"
    ),
    pytest.param(
        list_jobs(
            {"cursor": base64.urlsafe_b64encode(b"[" * 300 + b"]" * 300).decode()},
            "invalid_cursor",
        ),
        id="cursor-300-brackets",
    ),
    pytest.param(list_jobs({"cursor": "W" * 5000}), id="cursor-too-long"),
    pytest.param(list_jobs({"cursor": cursor_of({"a": 1})}, "invalid_cursor"), id="cursor-object"),
    pytest.param(list_jobs({"cursor": cursor_of(10**40)}, "invalid_cursor"), id="cursor-number"),
    pytest.param(
        list_jobs({"cursor": cursor_of(["2024-01-01T00:00:00+00:00", 5])}, "invalid_cursor"),
        id="cursor-id-not-string",
    ),
    pytest.param(list_jobs({"type": "t" * 129}), id="type-filter-too-long"),
    pytest.param(list_jobs({"limit": 10**30}), id="limit-huge"),
    pytest.param(list_jobs({"created_before": "99999-01-01"}), id="created-before-year-99999"),
    pytest.param(
        BadRequest("GET", "/dead-letters", 422, "validation_error", params={"cursor": 10**30}),
        id="dead-letter-cursor-huge",
    ),
    pytest.param(
        BadRequest("GET", "/dead-letters", 422, "validation_error", params={"cursor": -1}),
        id="dead-letter-cursor-negative",
    ),
    pytest.param(
        BadRequest("GET", "/dead-letters", 422, "validation_error", params={"cursor": "[[["}),
        id="dead-letter-cursor-not-int",
    ),
    pytest.param(list_jobs({"limit": 501}), id="limit-501"),
    pytest.param(list_jobs({"limit": 0}), id="limit-0"),
    pytest.param(list_jobs({"limit": "ten"}), id="limit-not-int"),
    pytest.param(list_jobs({"status": "sleeping"}), id="status-filter"),
    pytest.param(list_jobs({"priority": "urgent"}), id="priority-filter"),
    pytest.param(list_jobs({"created_after": "last week"}), id="created-after"),
    pytest.param(list_jobs({"type": "nul\u0000type"}), id="type-filter-nul"),
    # Routing
    pytest.param(BadRequest("GET", "/no/such/route", 404, "not_found"), id="unknown-route"),
    pytest.param(BadRequest("DELETE", "/jobs", 405, "method_not_allowed"), id="wrong-method"),
]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code < 500, response.text
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.mark.parametrize("bad", BAD_REQUESTS)
def test_bad_request_gets_a_coded_4xx(product: Product, bad: BadRequest) -> None:
    # Given a running product
    # When the bad request arrives
    response = bad.send(product.http)

    # Then it is refused with the expected status and error code, as JSON
    assert_error(response, bad.status, bad.code)


def test_validation_errors_point_at_the_field(product: Product) -> None:
    # Given a running product
    # When a submission has a bad nested field
    response = product.http.post("/jobs", json={"retry_config": {"max_attempts": 0}})

    # Then the details say which field and why
    details = assert_error(response, 422, "validation_error")["details"]
    assert [d["loc"] for d in details] == [["body", "retry_config", "max_attempts"]]


def test_capacity_error_names_the_resource(product: Product) -> None:
    # Given a pool of the configured capacity
    capacity = product.http.get("/stats").json()["tokens"]["cpu_units"]["capacity"]

    # When a job asks for one CPU unit more than the whole pool
    response = product.http.post(
        "/jobs", json={"resource_requirements": {"cpu_units": capacity + 1}}
    )

    # Then it is refused, and the details say what was asked and what exists
    details = assert_error(response, 422, "exceeds_capacity")["details"]
    assert details["cpu_units"] == {"requested": capacity + 1, "capacity": capacity}
    assert "memory_mb" not in details


def test_payload_of_exactly_64_kib_is_accepted(product: Product) -> None:
    # Given a payload whose compact JSON is exactly 64 KiB
    overhead = len(json.dumps({"blob": ""}, separators=(",", ":")))
    payload = {"blob": "x" * (64 * KIB - overhead)}
    assert len(json.dumps(payload, separators=(",", ":"))) == 64 * KIB

    # When it is submitted, and when one more byte is
    accepted = product.http.post("/jobs", json={"payload": payload})
    payload["blob"] += "x"
    refused = product.http.post("/jobs", json={"payload": payload})

    # Then the limit is inclusive
    assert accepted.status_code == 201, accepted.text
    assert_error(refused, 413, "payload_too_large")


def test_bad_requests_lose_nothing_accepted_before(product: Product) -> None:
    # Given jobs accepted before any bad request, one of them still waiting
    product.http.post("/scheduler/pause")
    accepted = [
        product.submit({"job_id": "kept_1", "type": "noop"})["job_id"],
        product.submit({"job_id": "kept_2", "priority": "high"})["job_id"],
        product.submit({"type": "send_email", "payload": {"to": "a@example.com"}})["job_id"],
    ]

    # When every kind of bad request arrives
    statuses: dict[str, int] = {}
    for param in BAD_REQUESTS:
        bad = param.values[0]
        assert isinstance(bad, BadRequest)
        statuses[str(param.id)] = bad.send(product.http).status_code

    # Then none was a server error
    assert {k: s for k, s in statuses.items() if s >= 500} == {}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    # and the accepted jobs are all still there, untouched, and nothing else was stored
    listed = product.http.get("/jobs", params={"limit": 500}).json()
    assert sorted(j["job_id"] for j in listed["items"]) == sorted(accepted)
    for job_id in accepted:
        job = product.job(job_id)
        assert job["status"] == "pending"
        assert job["waiting_reason"] == "paused"
    # and they still run once the scheduler resumes
    product.http.post("/scheduler/resume")
    jobs = product.wait_all_terminal(accepted, timeout=30)
    assert {j["status"] for j in jobs.values()} == {"completed"}
