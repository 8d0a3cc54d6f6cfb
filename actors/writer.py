"""The worker process's one database writer: group commit for claims and attempt ends.

Every worker thread hands its claim ("may I run attempt N of job X?") and its attempt's
end to this writer and waits for the answer. The writer thread takes whatever requests
are waiting (at once when idle, so an idle worker adds no delay), applies them in one
transaction (`worker_batch.apply_batch`), commits, publishes what the returned tokens
admitted, and answers every request of the batch. Under load a batch holds the requests
that arrived during the previous transaction: per-job cost falls as load rises.

The same thread is the process's heartbeat: every `heartbeat_seconds` it renews the leases
of the attempts this process runs, so they expire `lease_ttl_seconds` after the process
dies (or hangs), and never while it runs them, however long their handler takes.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from queue_service.broker import TaskQueueBroker
from queue_service.db import in_transaction, relaxed_commit
from queue_service.lifecycle import AttemptEnd, release_and_admit
from queue_service.logging import get_logger
from queue_service.publisher import Admitted, dead_letter_body, publish_admitted
from queue_service.repository import leases as leases_repo
from queue_service.repository.jobs import ClaimedAttempt
from queue_service.retry_policy import AttemptResult, Outcome
from queue_service.settings import Settings
from queue_service.worker_batch import BatchResult, ClaimRequest, apply_batch

log = get_logger(__name__)

# How many requests one transaction takes at most: bounds the statement sizes.
MAX_BATCH = 512
# A completion that cannot reach PostgreSQL is retried with this backoff (seconds).
FINISH_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class _Request:
    item: ClaimRequest | AttemptEnd
    answer: Future[Any]


class AttemptWriter:
    """Claims and attempt ends of one worker process, applied in batches."""

    def __init__(
        self, engine: sa.Engine, settings: Settings, broker: TaskQueueBroker, worker: str
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._broker = broker
        self._worker = worker
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskq-writer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout=10)

    # --- what worker threads call ----------------------------------------------------

    def claim(self, job_id: str, attempt: int, redelivered: bool) -> ClaimedAttempt | None:
        """The claimed attempt, or None when it is not this worker's to run."""
        result: ClaimedAttempt | None = self._submit(ClaimRequest(job_id, attempt, redelivered))
        return result

    def finish(self, end: AttemptEnd) -> Outcome | None:
        """Record an attempt's end; its outcome, or None when it was no longer running.

        A completion that cannot reach PostgreSQL is retried with backoff until it is
        recorded: the attempt's result is never dropped (each try is the same guarded
        statement, so a retry after a lost commit answer changes nothing).
        """
        for delay in (*FINISH_RETRY_DELAYS, *([FINISH_RETRY_DELAYS[-1]] * 10_000)):
            try:
                outcome: Outcome | None = self._submit(end)
                return outcome
            except sa.exc.DBAPIError as error:
                log.warning(
                    "finish_retrying",
                    job_id=end.job_id,
                    attempt=end.attempt,
                    error=type(error.orig).__name__,
                    retry_in=delay,
                )
                time.sleep(delay)
        raise RuntimeError("unreachable: the retry schedule is practically endless")

    def give_back_running(self) -> int:
        """At shutdown: end every attempt this process claimed and has not finished as
        INTERRUPTED (retried at once, not counted), which returns their tokens."""
        with self._engine.connect() as conn:
            running = leases_repo.started_by(conn, self._worker)
        for job_id, attempt in running:
            log.warning("attempt_given_back", job_id=job_id, attempt=attempt)
            self._submit(
                AttemptEnd(
                    job_id,
                    attempt,
                    AttemptResult.INTERRUPTED,
                    "the worker shut down before the attempt ended; given back",
                )
            )
        return len(running)

    def _submit(self, item: ClaimRequest | AttemptEnd) -> Any:
        self._ensure_started()
        answer: Future[Any] = Future()
        self._requests.put(_Request(item, answer))
        return answer.result()

    # --- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        while True:
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + self._settings.heartbeat_seconds
            try:
                first = self._requests.get(timeout=max(0.0, next_heartbeat - time.monotonic()))
            except queue.Empty:
                continue
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    following = self._requests.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    self._requests.put(None)  # stop after this batch
                    break
                batch.append(following)
            try:
                self._flush(batch)
            except Exception as error:  # never let the thread die: every thread waits on it
                log.exception("writer_flush_failed", size=len(batch))
                for request in batch:
                    if not request.answer.done():
                        request.answer.set_exception(error)

    def _heartbeat(self) -> None:
        """Renew the leases of this process's running attempts (see lease_ttl_seconds)."""
        try:
            with self._engine.begin() as conn:
                leases_repo.renew_leases(
                    conn, self._worker, self._settings.lease_ttl_seconds, datetime.now(UTC)
                )
        except Exception as error:  # PostgreSQL away: no lease can expire meanwhile either
            log.warning("heartbeat_failed", error=type(error).__name__)

    def _flush(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        try:
            result, admitted = self._apply(batch)
        except sa.exc.DBAPIError as error:
            if len(batch) > 1 and not error.connection_invalidated:
                # One bad item must not fail the others: apply each on its own.
                for request in batch:
                    self._flush([request])
                return
            for request in batch:
                request.answer.set_exception(error)
            return
        except Exception as error:  # a bug: answer everyone rather than hang their threads
            log.exception("writer_batch_failed", size=len(batch))
            for request in batch:
                request.answer.set_exception(error)
            return
        applied = time.perf_counter()
        publish_admitted(self._broker, admitted)
        log.debug(
            "writer_flush",
            size=len(batch),
            admitted=len(admitted),
            transaction_ms=round((applied - started) * 1000, 2),
            publish_ms=round((time.perf_counter() - applied) * 1000, 2),
        )
        for request in batch:
            key = (request.item.job_id, request.item.attempt)
            if isinstance(request.item, ClaimRequest):
                # Two deliveries of one attempt in one batch: only the first runs it.
                request.answer.set_result(result.claimed.pop(key, None))
            else:
                request.answer.set_result(result.outcomes.get(key))

    def _apply(self, batch: list[_Request]) -> tuple[BatchResult, list[Admitted]]:
        claims = [r.item for r in batch if isinstance(r.item, ClaimRequest)]
        ends = [r.item for r in batch if isinstance(r.item, AttemptEnd)]
        now = datetime.now(UTC)
        # 1. Claims, outcomes, dependents, events: committed durably.
        result = in_transaction(
            self._engine,
            lambda conn: apply_batch(
                conn, self._settings, self._worker, claims, ends, now, dead_letter_body
            ),
        )
        if not result.releases:
            return result, []
        # 2. Leases and tokens back, admission: the pool row, locked for one statement and
        # a commit that does not wait for the disk (see lifecycle.release_and_admit).
        admitted = in_transaction(
            self._engine,
            lambda conn: release_and_admit(
                relaxed_commit(conn), self._settings, result.releases, now
            ),
        )
        return result, admitted
