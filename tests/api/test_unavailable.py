"""An api whose PostgreSQL or RabbitMQ is unreachable: alive, not ready, never a 500.

Each test starts its own api process pointed at a closed port (127.0.0.1:1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ENV
from tests.support.product import Product

CLOSED_PORT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:1/taskq_unreachable_test"
CLOSED_PORT_BROKER = "amqp://guest:guest@127.0.0.1:1/taskq_unreachable_test"

StartApi = Callable[..., Product]


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[StartApi]:
    """Start an api alone (no workers) with extra TASKQ_* settings; wait for /healthz."""
    started: list[Product] = []

    def start(**env: str) -> Product:
        product = Product(env={**FAST_ENV, **env}, log_dir=tmp_path)
        started.append(product)
        product.start_api(wait_ready=False)
        return product

    yield start
    for product in started:
        product.stop()


@pytest.fixture(scope="module")
def without_postgresql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """One api for the module whose PostgreSQL is unreachable."""
    product = Product(
        env={**FAST_ENV, "TASKQ_DATABASE_URL": CLOSED_PORT_DATABASE},
        log_dir=tmp_path_factory.mktemp("without-postgresql"),
    )
    product.start_api(wait_ready=False)
    yield product
    product.stop()


def assert_unavailable(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "service_unavailable"
    return error


def test_without_postgresql_the_api_is_alive_but_not_ready(without_postgresql: Product) -> None:
    # Given an api whose PostgreSQL is unreachable
    product = without_postgresql

    # When it is probed
    health = product.http.get("/healthz")
    ready = product.http.get("/readyz")

    # Then it is alive, but not ready, and says which dependency is down
    assert health.status_code == 200
    checks = assert_unavailable(ready)["details"]
    assert checks["postgresql"].startswith("unreachable")
    assert checks["rabbitmq"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/jobs", {"type": "noop"}),
        ("POST", "/jobs/batch", {"jobs": [{}, {}]}),
        ("GET", "/jobs", None),
        ("GET", "/jobs/job_x", None),
        ("GET", "/jobs/job_x/logs", None),
        ("PATCH", "/jobs/job_x/cancel", None),
        ("GET", "/dead-letters", None),
        ("POST", "/dead-letters/1/replay", None),
        ("POST", "/scheduler/pause", None),
        ("POST", "/scheduler/resume", None),
        ("GET", "/stats", None),
        ("GET", "/metrics", None),
    ],
)
def test_without_postgresql_every_route_answers_503(
    without_postgresql: Product, method: str, path: str, body: Any
) -> None:
    # Given an api whose PostgreSQL is unreachable
    product = without_postgresql

    # When a route that needs the database is called
    response = product.http.request(method, path, json=body)

    # Then it answers 503 service_unavailable, never a 500
    assert_unavailable(response)


def test_without_postgresql_bad_input_is_still_a_4xx(without_postgresql: Product) -> None:
    # Given an api whose PostgreSQL is unreachable
    product = without_postgresql

    # When a submission is invalid in shape
    response = product.http.post("/jobs", json={"priority": "urgent"})

    # Then it is refused as invalid: the database is not needed to say so
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_without_rabbitmq_jobs_are_still_accepted(start_api: StartApi, clean_state: None) -> None:
    # Given an api whose RabbitMQ is unreachable (PostgreSQL is up)
    product = start_api(TASKQ_BROKER_URL=CLOSED_PORT_BROKER)

    # When it is probed and a job is submitted
    ready = product.http.get("/readyz")
    response = product.http.post("/jobs", json={"job_id": "stored_anyway", "type": "noop"})

    # Then it is not ready, RabbitMQ named as the cause
    checks = assert_unavailable(ready)["details"]
    assert checks == {"postgresql": "ok", "rabbitmq": checks["rabbitmq"]}
    assert checks["rabbitmq"].startswith("unreachable")
    # but the job is stored (PostgreSQL holds the truth; maintenance publishes it later)
    assert response.status_code == 201, response.text
    assert product.job("stored_anyway")["status"] in {"pending", "running", "completed"}
