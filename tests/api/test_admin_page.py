"""GET /: the console is served with its own scripts and the vendored libraries (no other
origin), its script never parses server data as HTML, and it calls only routes the API
has. What it does in a browser is tested in tests/browser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match

from api.main import create_app
from queue_service.settings import Settings

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"

# (method, route path, literal of console.js that makes the call)
CALLS = [
    ("GET", "/stats/overview", '"/stats/overview"'),
    ("GET", "/jobs", '"/jobs?"'),
    ("GET", "/jobs/{job_id}", '"/jobs/" + id'),
    ("GET", "/jobs/{job_id}/logs", '"/logs"'),
    ("PATCH", "/jobs/{job_id}/cancel", '"/cancel"'),
    ("GET", "/workers", '"/workers"'),
    ("GET", "/dead-letters", '"/dead-letters?limit=100"'),
    ("POST", "/dead-letters/{dead_letter_id}/replay", '"/replay"'),
    ("DELETE", "/dead-letters/{dead_letter_id}", '"DELETE", "/dead-letters/" + letter.id'),
    ("POST", "/scheduler/pause", "'/scheduler/pause'"),
    ("POST", "/scheduler/resume", "'/scheduler/resume'"),
]


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # No lifespan: GET / and the static files need neither PostgreSQL nor RabbitMQ.
    return create_app(Settings())


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    yield TestClient(app)


@pytest.fixture(scope="module")
def page(client: TestClient) -> str:
    return client.get("/").text


def test_get_root_serves_the_console_as_html(client: TestClient, page: str) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Smart Task Queue" in page


def test_every_script_and_stylesheet_is_served_from_static(client: TestClient, page: str) -> None:
    sources = re.findall(r'<(?:script[^>]*\bsrc|link[^>]*\bhref)="([^"]+)"', page)
    assert sources, "the page loads its scripts and styles"
    for source in sources:
        if source.startswith("data:"):
            continue
        assert source.startswith("/static/"), f"{source} is not served by the api"
        assert client.get(source).status_code == 200, source
    assert not re.search(r"https?://", page), "nothing from another origin (works offline)"


@pytest.mark.parametrize(
    ("name", "licence"),
    [("alpine.min.js", "MIT License"), ("uplot.min.js", "MIT License")],
)
def test_vendored_libraries_keep_their_licence_header(name: str, licence: str) -> None:
    first_line = (STATIC / name).read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith("/*!") and licence in first_line


def test_the_console_never_renders_server_data_as_html(page: str) -> None:
    script = (STATIC / "console.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"console.js uses {sink}"
    assert "x-html" not in page, "server strings are bound with x-text only"
    assert "x-text" in page


def _routes_websocket(app: FastAPI, path: str) -> bool:
    scope = {"type": "websocket", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_the_console_calls_only_routes_the_api_has(page: str, app: FastAPI) -> None:
    http = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    code = (STATIC / "console.js").read_text(encoding="utf-8") + page
    for method, path, literal in CALLS:
        assert literal in code, f"the console does not call {method} {path} ({literal})"
        assert (method, path) in http, f"the API has no {method} {path}"
    assert '"/jobs/stream"' in code and _routes_websocket(app, "/jobs/stream")
    assert "JSON.stringify({ token: this.key })" in code, "the stream's first message is the key"
    assert "Authorization" in code and "sessionStorage" in code and 'credentials: "omit"' in code


def test_the_links_lead_to_pages_the_api_serves(client: TestClient, page: str) -> None:
    assert 'href="/docs"' in page and 'href="/metrics"' in page
    assert client.get("/docs").status_code == 200
