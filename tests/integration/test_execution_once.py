"""Each attempt runs at most once (SPEC scheduling rule 6), against real RabbitMQ,
PostgreSQL and worker processes: a message published twice, and two worker processes
racing over many duplicates of the same attempts."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pika
import pytest
import sqlalchemy as sa

from queue_service import names
from queue_service.model import Admitted, Priority
from queue_service.rabbitmq.broker import build_broker, connection_parameters
from queue_service.rabbitmq.publishing import publish_admitted
from queue_service.settings import Settings
from tests.support.product import Product, wait_until

StartProduct = Callable[..., Product]  # the start_product fixture


@pytest.fixture
def broker(settings: Settings) -> Iterator[dramatiq.Broker]:
    """A publisher's broker, as the api and the workers build theirs."""
    broker = build_broker(settings, connection_name="taskq-tests publisher")
    yield broker
    broker.close()


def queue_depth(settings: Settings) -> int:
    """Messages in taskq.jobs right now (ready + unacknowledged)."""
    params = connection_parameters(settings.broker_url, "taskq-tests")
    connection = pika.BlockingConnection(pika.ConnectionParameters(**params))
    try:
        channel = connection.channel()
        declared = channel.queue_declare(names.JOBS_QUEUE, passive=True)
        return int(declared.method.message_count)
    finally:
        connection.close()


def runs_by_attempt(engine: sa.Engine) -> Counter[tuple[str, int]]:
    """How many times each (job, attempt) started, from the job_running events."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT job_id, attempt FROM job_events WHERE event = 'job_running'")
        ).all()
    return Counter((r.job_id, r.attempt) for r in rows)


def claiming_workers(engine: sa.Engine) -> set[str]:
    """The worker processes (`taskq-worker host:pid`) that claimed an attempt."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT DISTINCT data->>'worker' FROM job_events WHERE event = 'job_running'")
        ).scalars()
        return set(rows)


def worker_log_events(product: Product) -> list[dict[str, Any]]:
    """The structured log events of the worker processes (one JSON object a line)."""
    events = []
    for process in product.processes:
        if process.name.startswith("worker") and process.log_path.exists():
            for line in process.log_path.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # dramatiq's own log lines, or two processes' lines interleaved
                if isinstance(event, dict):
                    events.append(event)
    return events


def test_a_message_published_twice_runs_once(
    start_product: StartProduct,
    broker: dramatiq.Broker,
    settings: Settings,
    engine: sa.Engine,
) -> None:
    # Given an admitted job whose message waits in RabbitMQ (no worker is running yet; no
    # republish of the unclaimed attempt while a slow machine starts the worker)
    product = start_product(workers=0, TASKQ_REPUBLISH_AFTER_SECONDS="120")
    job_id = product.submit({"type": "noop", "payload": {"duration_seconds": 0.3}})["job_id"]
    # (the api admits and publishes after it answers: wait for it)
    wait_until(lambda: product.job(job_id)["queued_at"] is not None, 10, 0.05, "admission")
    # and the same attempt published twice more
    admitted = Admitted(job_id, 1, Priority.NORMAL)
    assert publish_admitted(broker, [admitted]) == 1
    assert publish_admitted(broker, [admitted]) == 1
    wait_until(lambda: queue_depth(settings) == 3, 10, 0.1, "three copies in taskq.jobs")

    # When a worker consumes all three copies
    product.start_worker(processes=1, threads=8)
    job = product.wait_for_status(job_id, "completed", timeout=20)
    wait_until(lambda: queue_depth(settings) == 0, 10, 0.1, "taskq.jobs to drain")

    # Then the attempt ran once; the copies were skipped
    assert job["attempts"] == 1
    assert runs_by_attempt(engine) == {(job_id, 1): 1}
    skipped = [e for e in worker_log_events(product) if e["event"] == "message_skipped"]
    assert len(skipped) == 2
    assert {e["job_id"] for e in skipped} == {job_id}

    # When the finished attempt is published again
    assert publish_admitted(broker, [admitted, admitted]) == 2
    wait_until(lambda: queue_depth(settings) == 0, 10, 0.1, "taskq.jobs to drain")
    wait_until(
        lambda: sum(e["event"] == "message_skipped" for e in worker_log_events(product)) == 4,
        10,
        0.1,
        "both late copies to be skipped",
    )

    # Then nothing runs again and no tokens are held
    assert runs_by_attempt(engine) == {(job_id, 1): 1}
    assert product.job(job_id)["status"] == "completed"
    assert product.http.get("/stats").json()["tokens"]["cpu_units"]["used"] == 0


@pytest.mark.parametrize(
    "claim_on_delivery",
    [
        pytest.param(False, id="claimed-when-a-thread-takes-it-prefetch-equal-to-threads"),
        pytest.param(True, id="claimed-on-delivery-prefetch-above-threads"),
    ],
)
def test_two_workers_racing_over_duplicates_run_each_attempt_once(
    start_product: StartProduct,
    broker: dramatiq.Broker,
    settings: Settings,
    engine: sa.Engine,
    claim_on_delivery: bool,
) -> None:
    # Given admitted jobs waiting in RabbitMQ, half of which fail their first attempt
    product = start_product(workers=0, TASKQ_CLAIM_ON_DELIVERY=str(int(claim_on_delivery)))
    jobs: dict[str, int] = {}  # job id -> attempts it needs
    for index in range(16):
        flaky = index % 2 == 1
        body: dict[str, Any] = {"type": "noop", "payload": {"duration_seconds": 0.2}}
        if flaky:
            body["payload"]["fail_times"] = 1
            body["retry_config"] = {"max_attempts": 2, "initial_delay_seconds": 0.1}
        jobs[product.submit(body)["job_id"]] = 2 if flaky else 1
    # and every attempt each job will make published 8 more times, interleaved (copies of
    # a second attempt arrive before it is admitted, and while it waits to be claimed)
    copies = [Admitted(job_id, attempt, Priority.NORMAL) for job_id in jobs for attempt in (1, 2)]
    for _ in range(8):
        assert publish_admitted(broker, copies) == len(copies)

    # When two worker processes consume them all at once (claiming on delivery, each holds
    # four times as many messages as it has threads)
    product.start_worker(processes=2, threads=4, prefetch=16 if claim_on_delivery else 4)
    settled = product.wait_all_terminal(list(jobs), timeout=60)
    wait_until(lambda: queue_depth(settings) == 0, 30, 0.2, "taskq.jobs to drain")

    # Then every job completed, each of its attempts having run exactly once
    assert {j["status"] for j in settled.values()} == {"completed"}
    assert {job_id: j["attempts"] for job_id, j in settled.items()} == jobs
    expected = {(job_id, a): 1 for job_id, needed in jobs.items() for a in range(1, needed + 1)}
    assert runs_by_attempt(engine) == expected
    # and both processes took part, the duplicates being turned away by the claim or the lease
    assert len(claiming_workers(engine)) == 2
    log = worker_log_events(product)
    reasons = Counter(e["reason"] for e in log if e["event"] == "message_skipped")
    assert reasons["already_claimed"] > 0, reasons
    # and every token is back
    tokens = product.http.get("/stats").json()["tokens"]
    assert (tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]) == (0, 0)
