"""Authentication (SPEC "Authentication"): a bearer key on every route but health,
readiness, metrics and the admin page's HTML; scopes read < submit < admin; the
WebSocket streams nothing before its key is accepted.

The routes are enumerated from the app itself, so a route added without a decision about
its scope fails here. The refusals need no database (an app without its lifespan); what a
key may do is checked against the real api process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.auth import InvalidKeyConfig, KeyRing, Scope
from api.main import ROUTERS, create_app
from queue_service.settings import Settings
from tests.support.product import API_KEYS, Product, api_keys_env, bearer

OPEN = {("GET", "/"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}

# The scope each protected route needs. A new route must be added here (see
# test_every_route_has_a_declared_scope), and the tests below then check it is enforced.
NEEDS: dict[tuple[str, str], str] = {
    ("GET", "/jobs"): "read",
    ("GET", "/jobs/{job_id}"): "read",
    ("GET", "/jobs/{job_id}/logs"): "read",
    ("GET", "/job-types"): "read",
    ("GET", "/stats"): "read",
    ("GET", "/stats/overview"): "read",
    ("GET", "/workers"): "read",
    ("GET", "/dead-letters"): "read",
    ("GET", "/dead-letters/{dead_letter_id}"): "read",
    ("POST", "/jobs"): "submit",
    ("POST", "/jobs/batch"): "submit",
    ("PATCH", "/jobs/{job_id}/cancel"): "submit",
    ("POST", "/dead-letters/{dead_letter_id}/replay"): "admin",
    ("DELETE", "/dead-letters/{dead_letter_id}"): "admin",
    ("POST", "/scheduler/pause"): "admin",
    ("POST", "/scheduler/resume"): "admin",
}
SCOPES = ["read", "submit", "admin"]
PATH_VALUES = {"job_id": "no_such_job", "dead_letter_id": "987654"}
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/jobs"): {"job_id": "auth_probe", "type": "noop"},
    ("POST", "/jobs/batch"): {"jobs": [{"job_id": "auth_probe_batch", "type": "noop"}]},
}


def _routes() -> set[tuple[str, str]]:
    """Every HTTP route of every router the app includes, listed in the schema or not."""
    return {
        (method, route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def _request(
    http: httpx.Client | TestClient, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = BODIES.get((method, path))
    return http.request(method, _url(path), json=body, headers=headers or {})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.url, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert set(error) == {"code", "message", "details"}
    return error


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # No lifespan: refusals happen before a route touches PostgreSQL or RabbitMQ.
    return create_app(Settings(api_keys=SecretStr(api_keys_env())))


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    yield TestClient(app)


PROTECTED = sorted(NEEDS)


def test_every_route_has_a_declared_scope(app: FastAPI) -> None:
    # Given every HTTP route of the app: each is either open or needs a declared scope
    assert _routes() == set(NEEDS) | OPEN
    # and the OpenAPI document lists the same ones
    listed = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    assert listed == set(NEEDS) | OPEN


def test_openapi_shows_the_bearer_scheme_on_protected_routes_only(app: FastAPI) -> None:
    document = app.openapi()
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {"ApiKey"}
    assert (schemes["ApiKey"]["type"], schemes["ApiKey"]["scheme"]) == ("http", "bearer")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            key = (method.upper(), path)
            if key in OPEN:
                assert "security" not in operation, key
            else:
                assert operation["security"] == [{"ApiKey": []}], key
                assert {"401", "403"} <= set(operation["responses"]), key


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param(bearer("not-a-configured-key"), id="unknown-key"),
        pytest.param({"Authorization": f"Basic {API_KEYS['admin']}"}, id="not-bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param(bearer(API_KEYS["admin"] + "x"), id="admin-key-plus-one-char"),
    ],
)
def test_protected_routes_refuse_a_missing_or_unknown_key(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = _request(client, method, path, headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_key_below_the_needed_scope_is_forbidden(
    client: TestClient, method: str, path: str
) -> None:
    needed = NEEDS[(method, path)]
    for scope in SCOPES[: SCOPES.index(needed)]:
        response = _request(client, method, path, bearer(API_KEYS[scope]))
        error = assert_error(response, 403, "forbidden")
        assert error["details"] == {"scope": scope, "needed": needed}


def test_the_admin_page_and_docs_are_served_without_a_key(client: TestClient) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_without_configured_keys_every_protected_route_refuses() -> None:
    # Given an api started with TASKQ_API_KEYS empty: it runs, but never open
    client = TestClient(create_app(Settings(api_keys=SecretStr(""))))
    for method, path in PROTECTED:
        assert_error(_request(client, method, path, bearer("anything")), 401, "unauthorized")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "text",
    [
        "admin",
        "admin:",
        "root:Zq9-secret",
        ":Zq9-secret",
        "read:Zq9-secret,admin:Zq9-secret",
        "admin:Zq9-secret,,bogus",
    ],
)
def test_a_malformed_key_list_stops_the_start_without_naming_a_secret(text: str) -> None:
    with pytest.raises(InvalidKeyConfig) as error:
        KeyRing.parse(text)
    assert "Zq9" not in str(error.value)
    with pytest.raises(InvalidKeyConfig):
        create_app(Settings(api_keys=SecretStr(text)))


def test_the_key_ring_keeps_digests_and_nests_scopes() -> None:
    ring = KeyRing.parse(" read:r-1 , submit:s:with:colons,admin:a-1,")
    assert len(ring.entries) == 3
    assert all(len(digest) == 32 for digest, _ in ring.entries)
    assert "r-1" not in repr(ring)
    submit = ring.identify("s:with:colons")
    assert submit is not None and submit.scope is Scope.SUBMIT
    assert submit.allows(Scope.READ) and submit.allows(Scope.SUBMIT)
    assert not submit.allows(Scope.ADMIN)
    assert ring.identify("r-") is None and ring.identify("") is None


# --- against the real api process ----------------------------------------------------


def test_each_scope_may_call_what_it_needs(product: Product) -> None:
    # Given the running product with one key per scope
    for scope in SCOPES:
        with product.client_with(scope) as http:
            for method, path in PROTECTED:
                if SCOPES.index(scope) < SCOPES.index(NEEDS[(method, path)]):
                    continue
                # When the key calls a route its scope covers
                response = _request(http, method, path)
                # Then it is neither refused nor a server error (unknown ids are 404s)
                assert response.status_code not in (401, 403), (scope, method, path)
                assert response.status_code < 500, response.text
            http.post("/scheduler/resume")
    # and a read key sees what a submit key stored
    with product.client_with("read") as http:
        assert http.get("/jobs/auth_probe").json()["job_id"] == "auth_probe"


def test_the_scope_matrix_end_to_end(product: Product) -> None:
    read, submit = product.client_with("read"), product.client_with("submit")
    with read, submit:
        # read cannot submit, cancel, replay or pause
        assert_error(read.post("/jobs", json={}), 403, "forbidden")
        assert_error(read.patch("/jobs/x/cancel"), 403, "forbidden")
        # submit can submit and cancel, but not replay, discard or pause
        job = submit.post("/jobs", json={"type": "noop"})
        assert job.status_code == 201, job.text
        assert_error(submit.post("/dead-letters/1/replay"), 403, "forbidden")
        assert_error(submit.delete("/dead-letters/1"), 403, "forbidden")
        assert_error(submit.post("/scheduler/pause"), 403, "forbidden")
        assert read.get("/stats").json()["scheduler_paused"] is False
    # and open routes need nothing
    with product.client_with(None) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        assert_error(anonymous.get("/jobs"), 401, "unauthorized")


def test_no_key_or_secret_reaches_the_api_log(product: Product) -> None:
    # Given requests with good and bad keys
    with product.client_with("admin") as http:
        http.get("/jobs")
        http.get("/stats", headers=bearer("wrong-secret-123"))
    # Then the api's log holds neither a configured secret nor the broker's password
    api = next(p for p in product.processes if p.name == "api")
    text = api.log_path.read_text(errors="replace")
    for secret in API_KEYS.values():
        assert secret not in text
    assert "wrong-secret-123" not in text
    assert ":guest@" not in text


# --- WebSocket ---------------------------------------------------------------------


def _stream_url(product: Product) -> str:
    return f"ws://127.0.0.1:{product.api_port}/jobs/stream"


def _refused(ws: ClientConnection) -> dict[str, Any]:
    """The one message a refused client gets, and the 1008 close that follows."""
    message: dict[str, Any] = json.loads(ws.recv(timeout=10))
    assert message["event"] == "error", message
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    return message


@pytest.mark.parametrize(
    "first_message",
    [
        pytest.param({"token": "not-a-key"}, id="unknown-token"),
        pytest.param({"hello": "world"}, id="no-token"),
        pytest.param("not json", id="not-json"),
        pytest.param({"token": 42}, id="token-not-string"),
    ],
)
def test_the_stream_without_a_valid_key_streams_nothing_and_closes(
    product: Product, first_message: Any
) -> None:
    # Given a client without a header, whose first message carries no valid key
    with connect(_stream_url(product), open_timeout=10, close_timeout=2) as ws:
        ws.send(first_message if isinstance(first_message, str) else json.dumps(first_message))
        # When a job changes status meanwhile
        product.submit({"type": "noop"})
        # Then all it gets is an error, then close code 1008
        assert _refused(ws)["error"]["code"] == "unauthorized"


def test_the_stream_refuses_a_bad_header_key_at_once(product: Product) -> None:
    with connect(
        _stream_url(product), open_timeout=10, close_timeout=2, additional_headers=bearer("bad")
    ) as ws:
        assert _refused(ws)["error"]["code"] == "unauthorized"


def _streams_events(ws: ClientConnection, product: Product) -> None:
    hello = json.loads(ws.recv(timeout=10))
    assert hello["event"] == "subscribed", hello
    job_id = product.submit({"type": "noop"})["job_id"]
    while True:
        event = json.loads(ws.recv(timeout=30))
        if event["job_id"] == job_id and event["status"] == "completed":
            return


def test_the_stream_accepts_the_key_in_the_header(product: Product) -> None:
    headers = bearer(product.key("read"))
    with connect(
        f"{_stream_url(product)}?status=completed",
        open_timeout=10,
        close_timeout=2,
        additional_headers=headers,
    ) as ws:
        _streams_events(ws, product)


def test_the_stream_accepts_the_key_as_the_first_message(product: Product) -> None:
    with connect(
        f"{_stream_url(product)}?status=completed", open_timeout=10, close_timeout=2
    ) as ws:
        ws.send(json.dumps({"token": product.key("read")}))
        _streams_events(ws, product)
