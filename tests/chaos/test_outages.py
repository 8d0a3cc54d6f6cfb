"""RabbitMQ and PostgreSQL restarted while the product runs (private instances only).

During the outage the api stays alive and says what is down; afterwards the api, the
workers and the scheduler reconnect by themselves, and every job completes exactly once,
without an attempt spent on the outage.
"""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_rabbitmq.factories.executor import RabbitMqExecutor

from tests.chaos.conftest import StartProduct
from tests.support.chaos import (
    PoolSampler,
    check_invariants,
    print_figures,
    random_dag,
    wait_accepting,
    wait_all_completed,
    wait_progress,
)
from tests.support.product import wait_until

pytestmark = pytest.mark.chaos

JOBS = 400
OUTAGE_SECONDS = 3.0


def test_rabbitmq_restarted_mid_run(
    start_supervised: StartProduct, chaos_engine: sa.Engine, chaos_rabbitmq: RabbitMqExecutor
) -> None:
    # Given the supervised product running a DAG
    product = start_supervised(workers=2)
    bodies = random_dag("mq", JOBS, seed=11)
    started = time.monotonic()
    with PoolSampler(chaos_engine.url.render_as_string(hide_password=False)) as sampler:
        product.submit_batch(bodies)
        wait_progress(chaos_engine, "mq", 0.3, timeout=120)

        # When RabbitMQ stops
        down_at = time.monotonic()
        chaos_rabbitmq.stop()
        # Then the api is alive, not ready (RabbitMQ named), and still accepts jobs
        assert product.http.get("/healthz").status_code == 200
        ready = product.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["rabbitmq"].startswith("unreachable")
        extra = random_dag("mqdown", 50, seed=12)
        for body in extra:
            body["depends_on"] = []
            response = product.http.post("/jobs", json=body)
            assert response.status_code == 201, response.text
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))

        # When it comes back
        chaos_rabbitmq.start()
        up_at = time.monotonic()
        # Then the api is ready again, and every job completes
        wait_until(lambda: product.http.get("/readyz").status_code == 200, 30, 0.2, "/readyz 200")
        ready_s = time.monotonic() - up_at
        wait_all_completed(chaos_engine, "mq", JOBS + 50, timeout=180)
        drained_s = time.monotonic() - up_at
    figures = check_invariants(chaos_engine, "mq", JOBS + 50)
    assert not sampler.violations, f"capacity exceeded: {sampler.violations[:5]}"
    probe = product.probe_job_completes("mq_probe")
    print_figures(
        "rabbitmq restart",
        {
            **figures,
            "accepted_while_down": len(extra),
            "outage_s": up_at - down_at,
            "api_ready_after_s": ready_s,
            "all_done_after_restart_s": drained_s,
            "run_s": time.monotonic() - started,
            "pool_samples": sampler.samples,
            "probe_job_s": probe,
        },
    )


def test_postgresql_restarted_mid_run(
    start_supervised: StartProduct, chaos_engine: sa.Engine, chaos_postgresql: PostgreSQLExecutor
) -> None:
    # Given the supervised product running a DAG
    product = start_supervised(workers=2)
    bodies = random_dag("pg", JOBS, seed=13)
    started = time.monotonic()
    with PoolSampler(chaos_engine.url.render_as_string(hide_password=False)) as sampler:
        product.submit_batch(bodies)
        wait_progress(chaos_engine, "pg", 0.3, timeout=120)

        # When PostgreSQL stops (fast shutdown: every connection is dropped)
        down_at = time.monotonic()
        chaos_postgresql.stop()
        # Then the api is alive and answers 503 with Retry-After, never a 500
        assert product.http.get("/healthz").status_code == 200
        refused = product.http.post("/jobs", json={"type": "noop"})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["Retry-After"]) > 0
        ready = product.http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["postgresql"].startswith("unreachable")
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))

        # When it comes back
        chaos_postgresql.start()
        wait_accepting(chaos_postgresql.port)
        up_at = time.monotonic()
        # Then the api is ready again, and every job completes, each on its first attempt
        wait_until(lambda: product.http.get("/readyz").status_code == 200, 30, 0.2, "/readyz 200")
        ready_s = time.monotonic() - up_at
        wait_all_completed(chaos_engine, "pg", JOBS, timeout=180)
        drained_s = time.monotonic() - up_at
    print_figures(
        "postgresql restart",
        {
            "jobs": JOBS,
            "outage_s": up_at - down_at,
            "api_ready_after_s": ready_s,
            "all_done_after_restart_s": drained_s,
            "run_s": time.monotonic() - started,
            "pool_samples": sampler.samples,
            "failed_samples_during_outage": sampler.failed_samples,
        },
    )
    assert not sampler.violations, f"capacity exceeded: {sampler.violations[:5]}"
    check_invariants(chaos_engine, "pg", JOBS)
    product.probe_job_completes("pg_probe")
