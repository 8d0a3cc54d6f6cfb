"""Private PostgreSQL and RabbitMQ for the chaos tests, and the supervised product.

The faults (restarts, kills) hit only these private instances, started once per session on
free ports: the shared services on 5432/5672 are never touched. Each test gets an empty
database schema and empty queues, and starts the product with scripts/run.sh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_rabbitmq import factories
from pytest_rabbitmq.factories.executor import RabbitMqExecutor

from queue_service.settings import Settings
from tests.conftest import FAST_ENV, alembic_config, purge_queues
from tests.support.chaos import Supervised, base_dir, create_database, private_postgresql
from tests.support.product import free_port

DATABASE = "taskq_chaos"

RABBITMQ_DIR = Path(__file__).parent / "rabbitmq"

# Its own node on a free port, no plugins (the shared node keeps its management port).
chaos_rabbitmq_proc = factories.rabbitmq_proc(port=None, plugindir=RABBITMQ_DIR)


@pytest.fixture(scope="session")
def chaos_rabbitmq_config() -> Iterator[None]:
    """Our rabbitmq.conf instead of the system's, whose listener is the shared 5672."""
    previous = os.environ.get("RABBITMQ_CONFIG_FILE")
    os.environ["RABBITMQ_CONFIG_FILE"] = str(RABBITMQ_DIR / "rabbitmq.conf")
    yield
    if previous is None:
        os.environ.pop("RABBITMQ_CONFIG_FILE", None)
    else:
        os.environ["RABBITMQ_CONFIG_FILE"] = previous


@pytest.fixture(scope="session")
def chaos_rabbitmq(
    chaos_rabbitmq_config: None,  # first: read when the node starts
    chaos_rabbitmq_proc: RabbitMqExecutor,
) -> RabbitMqExecutor:
    """A private RabbitMQ node (pytest-rabbitmq), restarted by the tests at will."""
    return chaos_rabbitmq_proc


@pytest.fixture(scope="session")
def chaos_postgresql() -> Iterator[PostgreSQLExecutor]:
    """A private PostgreSQL cluster (pytest-postgresql's executor around Debian's pg_ctl)."""
    base = base_dir("taskq-chaos-pg-")
    executor = private_postgresql(base, free_port())
    executor.start()
    try:
        create_database(executor.port, DATABASE)
        yield executor
    finally:
        with contextlib.suppress(Exception):
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def chaos_settings(
    chaos_postgresql: PostgreSQLExecutor, chaos_rabbitmq: RabbitMqExecutor
) -> Settings:
    settings = Settings(
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{chaos_postgresql.port}/{DATABASE}",
        broker_url=f"amqp://guest:guest@127.0.0.1:{chaos_rabbitmq.port}/%2F",
    )
    command.upgrade(alembic_config(settings.database_url), "head")
    return settings


@pytest.fixture(scope="session")
def chaos_engine(chaos_settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(chaos_settings.database_url, pool_size=3, pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture
def chaos_clean(chaos_settings: Settings, chaos_engine: sa.Engine) -> None:
    with chaos_engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs, job_dependencies, job_events, leases, dead_letters"))
        conn.execute(
            sa.text("UPDATE resource_pool SET cpu_used = 0, memory_used = 0, paused = false")
        )
    purge_queues(chaos_settings)


StartProduct = Callable[..., Supervised]


@pytest.fixture
def start_supervised(
    chaos_settings: Settings,
    chaos_clean: None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[StartProduct]:
    """Start scripts/run.sh (api, `workers` worker processes, scheduler) on the private
    services, with FAST_ENV and extra TASKQ_* settings."""
    started: list[Supervised] = []

    def start(workers: int = 2, **env: str) -> Supervised:
        product = Supervised(
            env={
                **FAST_ENV,
                "TASKQ_DATABASE_URL": chaos_settings.database_url,
                "TASKQ_BROKER_URL": chaos_settings.broker_url,
                "TASKQ_WORKER_THREADS": "8",
                "TASKQ_POOL_CPU_UNITS": "16",
                "TASKQ_POOL_MEMORY_MB": "8192",
                "TASKQ_STOP_TIMEOUT": "10",
                **env,
            },
            log_path=tmp_path / f"run-{len(started)}.log",
            workers=workers,
        )
        started.append(product)
        product.start()
        return product

    yield start
    report = getattr(request.node, "rep_call", None)
    for product in started:
        product.stop()
        if report is not None and report.failed:
            print(f"--- run.sh log (tail) ---\n{product.log()[-6000:]}")
