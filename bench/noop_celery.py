"""The Celery baseline of bench/compare.py: a no-op task on a priority queue, late ack.

    BENCH_BROKER_URL=amqp://... celery -A bench.noop_celery worker --pool threads \
        --concurrency 8
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu import Exchange, Queue

from bench.completion_counter import record

QUEUE = "bench.noop"
TASK = "noop"
MAX_PRIORITY = 10


def build_app(url: str) -> Celery:
    """No result backend; acks after the task ran; BENCH_CELERY_PREFETCH_MULTIPLIER messages
    prefetched per thread (bench/compare.py: the same prefetch per process as the others)."""
    app = Celery("bench_noop", broker=url)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=int(os.environ.get("BENCH_CELERY_PREFETCH_MULTIPLIER", "1")),
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_queue_max_priority=MAX_PRIORITY,
        task_queues=[
            Queue(
                QUEUE,
                Exchange(QUEUE),
                routing_key=QUEUE,
                queue_arguments={"x-max-priority": MAX_PRIORITY},
            )
        ],
        broker_connection_retry_on_startup=True,
    )
    return app


app = build_app(os.environ.get("BENCH_BROKER_URL", "amqp://127.0.0.1:5672"))


@worker_ready.connect
def mark_ready(**_: Any) -> None:
    """Tell the benchmark this worker consumes (its log says so only at INFO level, which
    would also log every task)."""
    (Path(os.environ.get("BENCH_COUNT_DIR", ".")) / f"ready-{os.getpid()}").touch()


@app.task(name=TASK)
def noop() -> None:
    record()
