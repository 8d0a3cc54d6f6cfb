"""Shared fixtures: the test database, the test RabbitMQ vhost and the running product.

scripts/test.sh points TASKQ_DATABASE_URL at the `taskq_test` database and
TASKQ_BROKER_URL at the `taskq_test` vhost, so tests never touch a developer's data.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pika
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from queue_service import names
from queue_service.db import in_transaction
from queue_service.job_types import load_job_modules
from queue_service.rabbitmq.broker import connection_parameters
from queue_service.settings import Settings
from tests.support.product import ROOT, Product


def _own_services_per_xdist_worker() -> None:
    """Under pytest-xdist (`-n N`), each worker gets its own database and vhost
    (`taskq_test` -> `taskq_gw0_test`, vhost `taskq_test_gw0`), created when missing:
    tests truncate tables and purge queues, so workers must not share them."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker or "TASKQ_DATABASE_URL" not in os.environ:
        return
    if os.environ.get("TASKQ_TEST_SERVICES_OF") == worker:
        return  # done already (this module is imported again as `tests.conftest`)
    os.environ["TASKQ_TEST_SERVICES_OF"] = worker
    db_url = sa.engine.make_url(os.environ["TASKQ_DATABASE_URL"])
    database = f"{(db_url.database or 'taskq_test').removesuffix('_test')}_{worker}_test"
    admin = sa.create_engine(
        db_url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    with admin.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
        ).first()
        if exists is None:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    os.environ["TASKQ_DATABASE_URL"] = db_url.set(database=database).render_as_string(
        hide_password=False
    )
    broker = pika.URLParameters(os.environ["TASKQ_BROKER_URL"])
    vhost = f"{broker.virtual_host}_{worker}"
    management = os.environ.get("TASKQ_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
    auth = (broker.credentials.username, broker.credentials.password)
    quoted = urllib.parse.quote(vhost, safe="")
    httpx.put(f"{management}/api/vhosts/{quoted}", auth=auth, timeout=10).raise_for_status()
    httpx.put(
        f"{management}/api/permissions/{quoted}/{urllib.parse.quote(auth[0], safe='')}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
        auth=auth,
        timeout=10,
    ).raise_for_status()
    os.environ["TASKQ_BROKER_URL"] = (
        f"amqp://{auth[0]}:{auth[1]}@{broker.host}:{broker.port}/{quoted}"
    )


_own_services_per_xdist_worker()

# Property tests check answers, not speed: on a loaded 2-core machine input generation and
# examples are slow, which must not fail a test.
hypothesis_settings.register_profile(
    "taskq", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
hypothesis_settings.load_profile("taskq")

# Settings every test product runs with: short simulated work, fast maintenance.
FAST_ENV = {
    "TASKQ_DURATION_SCALE": "0.05",
    "TASKQ_MAINTENANCE_INTERVAL_SECONDS": "0.2",
    "TASKQ_LEASE_TTL_SECONDS": "3",
    "TASKQ_HEARTBEAT_SECONDS": "0.5",
    "TASKQ_REPUBLISH_AFTER_SECONDS": "5",
    "TASKQ_CANCEL_POLL_SECONDS": "0.1",
}


@pytest.fixture(scope="session")
def settings() -> Settings:
    settings = Settings()
    database = sa.engine.make_url(settings.database_url).database or ""
    if not database.endswith("_test"):
        pytest.exit(
            f"refusing to run against database {database!r}: run the tests with scripts/test.sh",
            returncode=2,
        )
    return settings


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(settings.database_url, pool_size=5)
    yield engine
    engine.dispose()


def alembic_config(database_url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


@pytest.fixture(scope="session")
def migrated(settings: Settings, engine: sa.Engine) -> None:
    """A freshly migrated schema, once per test session. The old schema is dropped rather
    than downgraded: a test database left by another version of the migrations must not
    stop the suite (tests/migrations checks downgrades on a scratch database)."""
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    command.upgrade(alembic_config(settings.database_url), "head")


def purge_queues(settings: Settings) -> None:
    params = connection_parameters(settings.broker_url, "taskq-tests")
    connection = pika.BlockingConnection(pika.ConnectionParameters(**params))
    try:
        for queue in (
            names.JOBS_QUEUE,
            f"{names.JOBS_QUEUE}.DQ",
            names.MAINTENANCE_QUEUE,
            f"{names.MAINTENANCE_QUEUE}.DQ",
            names.DEAD_LETTER_QUEUE,
        ):
            channel = connection.channel()
            try:
                channel.queue_purge(queue)
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
    finally:
        connection.close()


@pytest.fixture
def clean_state(migrated: None, settings: Settings, engine: sa.Engine) -> None:
    """Empty tables, an idle unpaused pool at the configured capacity, empty queues."""

    def empty(conn: sa.Connection) -> None:
        conn.execute(sa.text("TRUNCATE jobs, job_dependencies, job_events, leases, dead_letters"))
        conn.execute(
            sa.text(
                "UPDATE resource_pool SET cpu_used = 0, memory_used = 0, paused = false, "
                "cpu_capacity = :cpu, memory_capacity = :mem, "
                "cpu_capacity_configured = :cpu, memory_capacity_configured = :mem"
            ),
            {"cpu": settings.pool_cpu_units, "mem": settings.pool_memory_mb},
        )

    # A product stopping from the previous test may still write: a deadlock with the
    # TRUNCATE is retried.
    in_transaction(engine, empty)
    purge_queues(settings)


ProductFactory = Callable[..., Product]


@pytest.fixture
def shared_product_stopped(shared_product: Product) -> None:
    """The shared product's workers consume the same queue: they would run a test's jobs
    with the wrong settings and thread counts. `product` starts them again when needed."""
    shared_product.stop()


@pytest.fixture
def start_product(
    shared_product_stopped: None,  # first: stopped before the state is cleaned
    clean_state: None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[ProductFactory]:
    """Start an api and `workers` worker processes with extra TASKQ_* settings."""
    started: list[Product] = []

    def start(workers: int = 1, threads: int = 8, **env: str) -> Product:
        product = Product(env={**FAST_ENV, **env}, log_dir=tmp_path)
        started.append(product)
        product.start_api()
        for _ in range(workers):
            product.start_worker(processes=1, threads=threads)
        return product

    yield start
    failed = getattr(request.node, "rep_call", None)
    for product in started:
        if failed is not None and failed.failed:
            for process in product.processes:
                print(f"--- {process.name} log ---\n{process.log_tail(60)}")
        product.stop()


@pytest.fixture(scope="session")
def shared_product(migrated: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """One api and two worker processes for the tests that need no special settings.

    Started on first use by `product`; `start_product` stops it while its own runs.
    """
    product = Product(env=dict(FAST_ENV), log_dir=tmp_path_factory.getbasetemp())
    yield product
    product.stop()


@pytest.fixture
def product(
    shared_product: Product, clean_state: None, tmp_path_factory: pytest.TempPathFactory
) -> Product:
    """The shared product, with clean tables and queues."""
    if not shared_product.processes:
        # fresh logs: start_worker waits for "ready for action" in its log file
        shared_product.log_dir = tmp_path_factory.mktemp("shared-product")
        shared_product.start_api()
        shared_product.start_worker(processes=1)
        shared_product.start_worker(processes=1)
    return shared_product


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


os.environ.setdefault("TZ", "UTC")
# In-process submissions (integration tests) need the default job types registered, as the
# api and workers register them at start.
load_job_modules(Settings.model_fields["job_modules"].default)
