"""GET /: the admin page is one self-contained HTML file whose script only talks to routes
the API has, and never parses server data as HTML."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Match

from api.main import create_app
from queue_service.settings import Settings

# The elements the page's script fills in or listens to.
REQUIRED_IDS = {
    "cpu-bar", "cpu-text", "mem-bar", "mem-text",
    "scheduler-state", "pause-btn", "resume-btn",
    "status-counts", "queue-depth", "throughput",
    "running-body", "recent-body", "dead-body", "dead-count",
    "feed", "feed-state", "notice", "api-state", "last-updated", "rabbitmq-link",
}  # fmt: skip

# (method, route path, literals of the script that make the call)
CALLS = [
    ("GET", "/stats", ('"/stats"',)),
    ("GET", "/jobs", ('"/jobs?status=running&limit=50"', '"/jobs?limit=25"')),
    ("PATCH", "/jobs/{job_id}/cancel", ('"PATCH"', '"/cancel"')),
    ("GET", "/dead-letters", ('"/dead-letters"',)),
    ("POST", "/dead-letters/{dead_letter_id}/replay", ('"/replay"',)),
    ("DELETE", "/dead-letters/{dead_letter_id}", ('"DELETE", "/dead-letters/" + dl.id',)),
    ("POST", "/scheduler/pause", ('"/scheduler/pause"',)),
    ("POST", "/scheduler/resume", ('"/scheduler/resume"',)),
]


@pytest.fixture(scope="module")
def app() -> FastAPI:
    # No lifespan: GET / needs neither PostgreSQL nor RabbitMQ.
    return create_app(Settings())


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    yield TestClient(app)


@pytest.fixture(scope="module")
def page(client: TestClient) -> str:
    return client.get("/").text


def _routes_websocket(app: FastAPI, path: str) -> bool:
    scope = {"type": "websocket", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def _script(page: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 1, "one inline script"
    return scripts[0]


def test_get_root_serves_the_admin_page_as_html(client: TestClient) -> None:
    # When a browser asks for /
    response = client.get("/")

    # Then it gets the admin page
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>Smart Task Queue" in response.text


def test_the_page_has_every_element_its_script_uses(page: str) -> None:
    # Given the page served at GET /
    ids = set(re.findall(r'\bid="([^"]+)"', page))

    # Then the fixed set of elements is there
    assert ids >= REQUIRED_IDS, f"missing ids: {sorted(REQUIRED_IDS - ids)}"
    # and every id the script looks up exists, exactly once
    looked_up = set(re.findall(r"""(?:byId|getElementById)\(\s*["']([^"']+)["']""", _script(page)))
    assert looked_up, "the script looks up elements by id"
    assert looked_up <= ids, f"script uses missing ids: {sorted(looked_up - ids)}"
    duplicated = {i for i in ids if page.count(f'id="{i}"') > 1}
    assert not duplicated


def test_the_page_loads_nothing_from_elsewhere(page: str) -> None:
    # Given the page: then no script, stylesheet, font or image comes from another origin
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)
    assert not re.search(r"<link[^>]*>", page, flags=re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, flags=re.I)
    assert not re.search(r"<(img|iframe|object|embed|audio|video|source)\b", page, flags=re.I)
    # and the only absolute http(s) URL is the link to the RabbitMQ console
    absolute = re.findall(r"https?://[^\s\"'<>]+", page)
    assert absolute == ["http://127.0.0.1:15672/"], absolute


def test_the_script_never_parses_text_as_html(page: str) -> None:
    script = _script(page)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"the script uses {sink}"
    assert "textContent" in script


def test_the_script_calls_only_routes_the_api_has(page: str, app: FastAPI) -> None:
    # Given the HTTP routes of the API, as its OpenAPI document lists them
    http = {(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops}
    script = _script(page)

    # Then every call the page makes is to an existing route with the right method
    for method, path, literals in CALLS:
        for literal in literals:
            assert literal in script, f"the page does not call {method} {path} ({literal})"
        assert (method, path) in http, f"the API has no {method} {path}"
    # and the live feed opens the WebSocket route
    assert '"/jobs/stream"' in script
    assert _routes_websocket(app, "/jobs/stream")
    assert not _routes_websocket(app, "/jobs/no-such-stream")
    assert "setTimeout(connect" in script, "the stream reconnects when it closes"
    assert re.search(r"FEED_MAX\s*=\s*200\b", script)
    assert re.search(r"REFRESH_MS\s*=\s*2000\b", script)


def test_the_links_lead_to_pages_the_api_serves(client: TestClient, page: str) -> None:
    # Given the page's links to the API docs and the metrics
    assert 'href="/docs"' in page and 'href="/metrics"' in page

    # When the docs are fetched, then they are served (metrics need the database)
    assert client.get("/docs").status_code == 200
