"""The worker process's publisher: sends what the writer's flushes admitted, on a thread of
its own, so the writer's next flush does not wait for RabbitMQ.

Messages go out after their admission committed (the writer hands them over only then)
and in the order admission ranked them. Dramatiq's RabbitMQ broker keeps one connection
per thread, so this thread publishes on its own connection. What is queued here when the
process dies is not lost: maintenance republishes admitted attempts no worker claimed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import dramatiq

from queue_service.logging import get_logger
from queue_service.publisher import Admitted, publish_admitted

log = get_logger(__name__)


class AdmittedPublisher:
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
