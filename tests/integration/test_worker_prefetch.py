"""How many job messages a worker process holds: four per thread by default
(settings.worker_prefetch), TASKQ_WORKER_PREFETCH when set, Dramatiq's own
`dramatiq_queue_prefetch` above both. Read back from RabbitMQ's management API: the
consumer's prefetch count on taskq.jobs."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable

import httpx
import pika
import pytest

from actors.middleware.attempt_claim import queue_prefetch
from queue_service import names
from queue_service.settings import Settings
from tests.support.product import Product, wait_until

StartProduct = Callable[..., Product]  # the start_product fixture


def consumer_prefetch_counts(settings: Settings) -> list[int]:
    """The prefetch count of each consumer of taskq.jobs (none before it is declared)."""
    broker = pika.URLParameters(settings.broker_url)
    management = os.environ.get("TASKQ_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
    vhost = urllib.parse.quote(broker.virtual_host, safe="")
    queue = urllib.parse.quote(names.JOBS_QUEUE, safe="")
    answer = httpx.get(
        f"{management}/api/queues/{vhost}/{queue}",
        auth=(broker.credentials.username, broker.credentials.password),
        timeout=10,
    )
    if answer.status_code == 404:
        return []  # not declared yet: no consumer
    answer.raise_for_status()
    return sorted(c["prefetch_count"] for c in answer.json().get("consumer_details", []))


def test_the_default_is_four_messages_per_thread() -> None:
    assert queue_prefetch(Settings(), threads=8) == 32
    assert queue_prefetch(Settings(worker_prefetch=5), threads=8) == 5


@pytest.mark.parametrize(
    ("prefetch", "expected"),
    [pytest.param(None, 12, id="default-four-per-thread"), pytest.param(5, 5, id="set")],
)
def test_a_worker_process_holds_its_prefetch(
    start_product: StartProduct, settings: Settings, prefetch: int | None, expected: int
) -> None:
    # Given no worker consuming
    product = start_product(workers=0)
    assert consumer_prefetch_counts(settings) == []

    # When a worker process of 3 threads starts
    product.start_worker(processes=1, threads=3, prefetch=prefetch)

    # Then RabbitMQ gives its consumer the prefetch asked for (the management API's view
    # of consumers is refreshed every few seconds)
    wait_until(
        lambda: consumer_prefetch_counts(settings) == [expected],
        30,
        0.5,
        f"a consumer of {names.JOBS_QUEUE} with prefetch {expected}",
    )
