"""/metrics after Prometheus conventions, from the api and from a worker process.

Given a product with one worker process serving its own metrics, when a known workload
runs (5 jobs complete, 1 is retried once then completes, 1 is dead-lettered), then the
api's /metrics (merged over the machine's processes) and the worker's own endpoint both
parse, and their counters and histogram counts equal what happened.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import ProductFactory
from tests.support.product import Product, free_port, wait_until

FAST_RETRY = {"max_attempts": 3, "initial_delay_seconds": 0.1, "max_delay_seconds": 0.2}


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def total(items: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in items
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def run_workload(product: Product) -> None:
    ids = [product.submit({"type": "noop"})["job_id"] for _ in range(5)]
    ids.append(
        product.submit({"type": "noop", "payload": {"fail_times": 1}, "retry_config": FAST_RETRY})[
            "job_id"
        ]
    )
    ids.append(product.submit({"type": "invalid_operation"})["job_id"])
    jobs = product.wait_all_terminal(ids, timeout=60)
    assert [jobs[i]["status"] for i in ids] == ["completed"] * 6 + ["failed"]


def check_worker_counts(found: list[Sample]) -> None:
    assert total(found, "taskq_jobs_finished_total", type="noop", outcome="completed") == 6
    assert (
        total(found, "taskq_jobs_finished_total", type="invalid_operation", outcome="failed") == 1
    )
    assert total(found, "taskq_jobs_finished_total") == 7
    assert total(found, "taskq_job_retries_total", type="noop") == 1
    assert total(found, "taskq_dead_letters_total", type="invalid_operation") == 1
    # Every attempt (5 + 2 + 1) started after a wait and ran for a measured time.
    assert total(found, "taskq_job_wait_seconds_count") == 8
    assert total(found, "taskq_job_wait_seconds_count", priority="normal") == 8
    assert total(found, "taskq_job_run_seconds_count") == 8
    assert total(found, "taskq_job_run_seconds_count", type="noop") == 7


def test_metrics_count_a_known_workload(start_product: ProductFactory) -> None:
    worker_port = free_port()
    product = start_product(workers=1, TASKQ_WORKER_METRICS_PORT=str(worker_port))

    run_workload(product)

    api = samples(
        wait_until(
            lambda: (
                (r := product.http.get("/metrics")).status_code == 200
                and "taskq_jobs_finished_total" in r.text
                and r.text
            ),
            10,
            message="/metrics with job counters",
        )
    )
    assert total(api, "taskq_jobs_submitted_total") == 7
    check_worker_counts(api)
    # Shared state, read from PostgreSQL: an idle pool, in CPU units and in bytes.
    assert total(api, "taskq_pool_cpu_units", state="capacity") == 8
    assert total(api, "taskq_pool_cpu_units", state="free") == 8
    assert total(api, "taskq_pool_memory_bytes", state="capacity") == 4096 * 1024 * 1024
    assert total(api, "taskq_pool_memory_bytes", state="used") == 0
    assert total(api, "taskq_ready_jobs") == 0
    assert total(api, "taskq_workers_live") == 1
    assert 0 <= total(api, "taskq_maintenance_last_pass_age_seconds") < 10
    assert total(api, "taskq_dead_letters_open") == 1
    # Process metrics survive multiprocess mode (the api's own).
    assert total(api, "process_resident_memory_bytes") > 0
    assert total(api, "process_cpu_seconds_total") > 0

    own = samples(httpx.get(f"http://127.0.0.1:{worker_port}/metrics", timeout=10).text)
    check_worker_counts(own)
    assert total(own, "taskq_jobs_submitted_total") == 0  # the api's, not this process's
    assert total(own, "process_resident_memory_bytes") > 0


def test_workers_route_lists_live_processes(start_product: ProductFactory) -> None:
    product = start_product(workers=2)

    items = wait_until(
        lambda: len(items := product.http.get("/workers").json()["items"]) == 2 and items,
        10,
        message="two live workers",
    )

    assert {w["role"] for w in items} == {"worker"}
    assert len({w["pid"] for w in items}) == 2
    assert all(w["running_attempts"] == 0 and w["heartbeat_at"] for w in items)
