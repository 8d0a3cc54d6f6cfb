"""Publishing to RabbitMQ, always after the transaction that decided it committed.

`commit_then_publish` is the one way state changes reach RabbitMQ: it runs the caller's
work in a transaction and publishes what it admitted only once that committed (a message
for an attempt that then rolled back would name an attempt that does not exist).
`publish_admitted` sends admitted attempts (ids only); `publish_dead_letter` puts a dead
letter straight on the dead-letter exchange; `AdmittedPublisher` is a worker process's
publisher thread. Anything published can be published again: the worker's claim lets one
delivery per attempt through.

The worker's publisher thread sends what the writer's flushes admitted on a thread of its
own, so the writer's next flush does not wait for RabbitMQ. Messages go out after their
admission committed (the writer hands them over only then) and in the order admission
ranked them. Dramatiq's RabbitMQ broker keeps one connection per thread, so this thread
publishes on its own connection. What is queued there when the process dies is not lost:
maintenance republishes admitted attempts no worker claimed.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

import dramatiq
import pika
import sqlalchemy as sa

from queue_service import names
from queue_service.db import in_transaction
from queue_service.logging import get_logger
from queue_service.model import Admitted, Priority
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.rabbitmq.messages import job_message

log = get_logger(__name__)


def publish_admitted(broker: dramatiq.Broker, admitted: Iterable[Admitted]) -> int:
    """Publish each admitted attempt, in order, in one write; returns how many were sent.
    A failure is logged and left to maintenance.

    Maintenance republishes admitted attempts no worker claimed within
    `republish_after_seconds`, so a broker outage delays jobs but loses none.
    """
    messages = [job_message(item.job_id, item.attempt, item.priority) for item in admitted]
    if not messages:
        return 0
    try:
        if isinstance(broker, TaskQueueBroker):
            broker.publish_many(messages)
        else:  # another broker (a test's): Dramatiq's own path
            for message in messages:
                broker.enqueue(message)
    except Exception as error:  # the broker is down: maintenance republishes later
        log.warning(
            "publish_failed",
            count=len(messages),
            job_ids=[message.args[0] for message in messages[:20]],
            error=str(error),
        )
        return 0
    return len(messages)


def publish_dead_letter(
    broker: dramatiq.Broker, job_id: str, attempt: int, reason: str, error: str | None
) -> None:
    """Put a dead letter straight on the dead-letter exchange.

    Used when no message is at hand to reject, e.g. a job whose worker died on its last
    attempt: its redelivered message is skipped, so maintenance publishes the dead letter.
    """
    message = job_message(job_id, attempt, Priority.NORMAL)
    channel = broker.channel  # type: ignore[attr-defined]
    broker.declare_queue(names.JOBS_QUEUE, ensure=True)  # type: ignore[call-arg]  # declares the DLX too
    channel.basic_publish(
        exchange=names.DEAD_LETTER_EXCHANGE,
        routing_key=names.DEAD_LETTER_QUEUE,
        body=message.encode(),
        properties=pika.BasicProperties(
            delivery_mode=2,
            headers={"x-taskq-reason": reason, "x-taskq-error": json.dumps(error)},
        ),
    )


class AdmittedPublisher:
    """A worker process's publisher thread (see the module's docstring)."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self._broker = broker
        self._queue: queue.SimpleQueue[Sequence[Admitted] | Future[None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, admitted: Sequence[Admitted]) -> None:
        if not admitted:
            return
        self._ensure_started()
        self._queue.put(admitted)

    def drain(self) -> None:
        """Wait until everything handed over before this call has been published."""
        if self._thread is None:
            return
        done: Future[None] = Future()
        self._queue.put(done)
        done.result(timeout=30)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="taskq-publisher", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, Future):
                item.set_result(None)
                continue
            # Whatever else waits goes out in the same pass.
            batch = list(item)
            while True:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(following, Future):
                    self._queue.put(following)  # answered after this batch is out
                    break
                batch.extend(following)
            try:
                publish_admitted(self._broker, batch)
            except Exception:  # never let the thread die; maintenance republishes
                log.exception("publisher_failed", size=len(batch))


class CarriesAdmitted(Protocol):
    """A transaction's answer that carries what it admitted (lifecycle's consequences,
    a worker flush's result, ...)."""

    @property
    def admitted(self) -> Sequence[Admitted]: ...


Committed = TypeVar("Committed", bound="Sequence[Admitted] | CarriesAdmitted")
# How the work is run: `db.in_transaction`, or `db.in_autocommit` for one statement.
Runner = Callable[[sa.Engine, Callable[[sa.Connection], Committed]], Committed]


def commit_then_publish(
    engine: sa.Engine,
    publisher: dramatiq.Broker | AdmittedPublisher,
    work: Callable[[sa.Connection], Committed],
    run: Runner[Committed] = in_transaction,
) -> Committed:
    """Run `work` in a transaction, commit, then publish what it admitted; return its answer.

    `work` returns the admitted attempts, or an answer carrying them as `.admitted`. The
    publish happens only after the commit: nothing is published for a transaction that
    rolled back, and a crash between the two loses no job (maintenance republishes
    admitted attempts no worker claimed). A worker's writer passes its publisher thread,
    so its next flush does not wait for RabbitMQ; every other caller passes its broker.
    """
    result = run(engine, work)
    admitted = result if isinstance(result, Sequence) else result.admitted
    if isinstance(publisher, AdmittedPublisher):
        publisher.publish(admitted)
    else:
        publish_admitted(publisher, admitted)
    return result
