"""The plain Dramatiq baseline of bench/compare.py: a no-op actor on a priority queue.

BENCH_BROKER_URL=amqp://... dramatiq bench.noop_dramatiq --processes 2 --threads 8

BENCH_WAIT_MS (default 0) makes each message wait that long in a blocking call that
releases the GIL, as a thread of ours waits for its claim: what such a wait costs a
Dramatiq worker (`BENCH_WAIT_MS=5 .venv/bin/python bench/compare.py --systems dramatiq`).
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.completion_counter import record

QUEUE = "bench.noop"
WAIT_SECONDS = float(os.environ.get("BENCH_WAIT_MS", "0")) / 1000
ACTOR = "noop"
MAX_PRIORITY = 10


def build_broker(url: str) -> RabbitmqBroker:
    """A broker whose queues are declared with x-max-priority, as ours are."""
    return RabbitmqBroker(url=url, max_priority=MAX_PRIORITY)


dramatiq.set_broker(build_broker(os.environ.get("BENCH_BROKER_URL", "amqp://127.0.0.1:5672")))


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def noop() -> None:
    if WAIT_SECONDS:
        time.sleep(WAIT_SECONDS)
    record()
