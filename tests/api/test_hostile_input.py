"""Hostile input: oversized bodies are refused before parsing, deep payloads at submission,
and no answer carries database or driver text."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.main import create_app
from api.schemas import MAX_PAYLOAD_DEPTH
from queue_service.settings import Settings
from tests.support.product import Product, api_keys_env

MIB = 1024 * 1024


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep: {"a": {"a": ... {}}}."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


# --- body size, before anything parses it ---------------------------------------------


def test_a_body_over_the_limit_is_refused_by_its_declared_length(product: Product) -> None:
    # When a body of 17 MiB (over the default 16 MiB) is posted as a batch
    body = b'{"jobs": [' + b" " * (17 * MIB) + b"]}"
    response = product.http.post(
        "/jobs/batch", content=body, headers={"content-type": "application/json"}
    )
    # Then it is refused as too large, and the api goes on answering
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"]["limit"] == 16 * MIB
    assert product.http.get("/healthz").status_code == 200


def test_a_chunked_body_is_counted_as_it_arrives(product: Product) -> None:
    # When a body without Content-Length streams past the limit
    def chunks() -> Iterator[bytes]:
        yield b'{"jobs": ['
        for _ in range(17):
            yield b" " * MIB
        yield b"]}"

    response = product.http.post(
        "/jobs/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    # Then it is refused the same way
    assert_error(response, 413, "payload_too_large")
    assert product.http.get("/healthz").status_code == 200


@pytest.fixture(scope="module")
def small_limit() -> Iterator[TestClient]:
    app = create_app(Settings(api_keys=SecretStr(api_keys_env()), max_request_bytes=4096))
    yield TestClient(app)


def test_the_limit_is_a_setting_and_applies_before_the_key_is_checked(
    small_limit: TestClient,
) -> None:
    # Given an api limited to 4 KiB: a bigger body is refused before anything else
    big = small_limit.post("/jobs", content=b"{" + b" " * 5000 + b"}")
    assert_error(big, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        yield from (b" " * 1000 for _ in range(5))

    assert_error(small_limit.post("/jobs", content=chunks()), 413, "payload_too_large")
    # and a body within the limit is handed on whole (here: refused for the missing key)
    assert_error(small_limit.post("/jobs", json={"type": "noop"}), 401, "unauthorized")


# --- payload nesting ---------------------------------------------------------------


def test_a_payload_300_levels_deep_is_refused_at_submission(product: Product) -> None:
    response = product.http.post("/jobs", json={"job_id": "deep", "payload": nested(300)})
    error = assert_error(response, 422, "validation_error")
    assert [d["loc"] for d in error["details"]] == [["body", "payload"]]
    assert str(MAX_PAYLOAD_DEPTH) in error["details"][0]["msg"]
    assert_error(product.http.get("/jobs/deep"), 404, "job_not_found")


def test_the_nesting_limit_is_inclusive_and_readable_back(product: Product) -> None:
    # A payload exactly at the limit is stored and reads back; one level more is refused
    accepted = product.http.post(
        "/jobs", json={"job_id": "deep_ok", "payload": nested(MAX_PAYLOAD_DEPTH)}
    )
    assert accepted.status_code == 201, accepted.text
    assert product.job("deep_ok")["payload"] == nested(MAX_PAYLOAD_DEPTH)
    refused = product.http.post("/jobs", json={"payload": nested(MAX_PAYLOAD_DEPTH + 1)})
    assert_error(refused, 422, "validation_error")
    # arrays count as levels too
    deep_list: Any = []
    for _ in range(MAX_PAYLOAD_DEPTH):
        deep_list = [deep_list]
    assert_error(
        product.http.post("/jobs", json={"payload": {"x": deep_list}}), 422, "validation_error"
    )


def test_a_deep_payload_in_a_batch_names_the_job(product: Product) -> None:
    response = product.http.post("/jobs/batch", json={"jobs": [{}, {"payload": nested(100)}]})
    error = assert_error(response, 422, "validation_error")
    assert [d["loc"] for d in error["details"]] == [["body", "jobs", 1, "payload"]]


# --- no database text in answers ------------------------------------------------------


class _Diag:
    def __init__(self, constraint: str | None) -> None:
        self.constraint_name = constraint


class _DriverError(Exception):
    def __init__(self, constraint: str | None) -> None:
        super().__init__("duplicate key value violates unique constraint; DETAIL: Key (id)=(x)")
        self.diag = _Diag(constraint)


class _RawUniqueViolation(psycopg.errors.UniqueViolation):
    def __init__(self, constraint: str) -> None:
        super().__init__("duplicate key value violates unique constraint; DETAIL: Key (id)=(x)")
        self._constraint = constraint

    @property
    def diag(self) -> Any:
        return _Diag(self._constraint)


@pytest.fixture(scope="module")
def raising_app() -> FastAPI:
    """An app with one extra route that raises the database error it is asked for."""
    app = create_app(Settings(api_keys=SecretStr(api_keys_env())))

    @app.get("/test-raise/{kind}/{constraint}")
    def raise_it(kind: str, constraint: str) -> None:
        orig = _DriverError(None if constraint == "none" else constraint)
        if kind == "raw-unique":  # a driver error raised bare, as COPY raises it
            raise _RawUniqueViolation(constraint)
        error_type = {
            "integrity": sa.exc.IntegrityError,
            "data": sa.exc.DataError,
            "programming": sa.exc.ProgrammingError,
            "operational": sa.exc.OperationalError,
        }[kind]
        raise error_type("SELECT secret_table", {"p": 1}, orig)

    return app


@pytest.mark.parametrize(
    ("kind", "constraint", "status", "code"),
    [
        ("integrity", "jobs_pkey", 409, "duplicate_job_id"),
        ("integrity", "uq_jobs_idempotency_key", 409, "idempotency_conflict"),
        ("integrity", "job_dependencies_depends_on_fkey", 422, "unknown_dependency"),
        ("integrity", "some_other_constraint", 409, "conflict"),
        ("integrity", "none", 409, "conflict"),
        ("raw-unique", "uq_jobs_idempotency_key", 409, "idempotency_conflict"),
        ("data", "none", 422, "validation_error"),
        ("programming", "none", 500, "internal_error"),
        ("operational", "none", 503, "service_unavailable"),
    ],
)
def test_database_errors_map_to_domain_errors_without_driver_text(
    raising_app: FastAPI, kind: str, constraint: str, status: int, code: str
) -> None:
    client = TestClient(raising_app, raise_server_exceptions=False)
    response = client.get(f"/test-raise/{kind}/{constraint}")
    assert_error(response, status, code)
    for leak in ("duplicate key", "DETAIL", "secret_table", "SELECT", "constraint"):
        assert leak not in response.text, response.text
    if status == 503:
        assert response.headers["retry-after"]


def test_an_unstorable_value_answers_without_driver_text(product: Product) -> None:
    response = product.http.post("/jobs", json={"payload": {"text": "nul\u0000byte"}})
    error = assert_error(response, 422, "validation_error")
    assert set(error["details"]) == {"error_id"}
    assert "\\u0000" not in error["message"] and "jsonb" not in response.text.lower()
