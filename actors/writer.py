"""The worker process's one database writer: group commit for claims and attempt ends.

Every worker thread hands its claim ("may I run attempt N of job X?") and its attempt's
end to this writer. The writer thread takes whatever requests are waiting (at once when
idle, so an idle worker adds no delay), applies them in one flush
(`worker_batch.apply_flush`: one statement, in autocommit, when every end succeeded),
hands what the returned tokens admitted to the publisher thread (rabbitmq/publishing.py),
and answers the requests of the flush. Under load a flush holds the requests that arrived
during the previous one, and lingers a few milliseconds for more (`writer_linger_ms`):
per-job cost falls as load rises.

A claim waits for its answer (the attempt runs only if the claim committed). A succeeded
attempt does not: its thread goes on with the next message while the writer records the
end (`finish_later`), retrying until PostgreSQL has it. If the process dies before that,
the attempt's lease expires and the attempt is retried, as for a process that dies while
its handler runs. Other ends wait for their outcome: a final failure dead-letters the
message, which must happen before it is acknowledged.

The same thread is the process's heartbeat: every `heartbeat_seconds` it renews the leases
of the attempts this process runs, so they expire `lease_ttl_seconds` after the process
dies (or hangs), and never while it runs them, however long their handler takes. Before
that it withdraws the claims of flushes that lost their connection on every try: PostgreSQL
may have committed them, and no thread runs them (`_give_back_unheard`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from queue_service import lifecycle
from queue_service.db import HeldAutocommit, in_transaction
from queue_service.lifecycle import AttemptEnd
from queue_service.logging import get_logger
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.rabbitmq.messages import dead_letter_body
from queue_service.rabbitmq.publishing import AdmittedPublisher, commit_then_publish
from queue_service.repository import leases as leases_repo
from queue_service.repository.jobs import ClaimedAttempt
from queue_service.retry_policy import AttemptResult, Outcome
from queue_service.settings import Settings
from queue_service.worker_batch import ClaimRequest, FlushResult, apply_flush, split_ends

log = get_logger(__name__)

# How many requests one transaction takes at most: bounds the statement sizes.
MAX_BATCH = 512
# A flush this big does not wait for more (settings.writer_linger_ms): beyond it the cost
# per job barely falls (bench/flush_plans.py).
WRITER_ENOUGH = 16
# A completion that cannot reach PostgreSQL is retried with this backoff (seconds).
FINISH_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass
class _Request:
    item: ClaimRequest | AttemptEnd | None  # None: a barrier (see `drain`)
    # The waiting thread's answer; None for an end recorded later (`finish_later`).
    answer: Future[Any] | None
    on_recorded: Callable[[Outcome | None], None] | None = None
    tries: int = 0


_STOP = object()


class AttemptWriter:
    """Claims and attempt ends of one worker process, applied in batches."""

    def __init__(
        self, engine: sa.Engine, settings: Settings, broker: TaskQueueBroker, worker: str
    ) -> None:
        self._engine = engine
        # The flush's connection in the common case (one statement): held, not checked out.
        self._connection = HeldAutocommit(engine)
        self._settings = settings
        self._publisher = AdmittedPublisher(broker)
        self._worker = worker
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Ends recorded later whose flush failed: (monotonic time due, request).
        self._retries: list[tuple[float, _Request]] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # The process's worker threads (set at worker boot): when every one of them waits
        # for a claim in the batch, no request can come to linger for.
        self.threads: int | None = None
        # The time of the last flush: each flush's is later (`_flush_time`).
        self._last_flush_time = datetime.min.replace(tzinfo=UTC)
        # Claims of flushes that lost their connection on every try: PostgreSQL may have
        # committed one before it went, so they are given back (`_give_back_unheard`).
        self._unheard: list[tuple[datetime, list[tuple[str, int]]]] = []

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskq-writer", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._requests.put(_STOP)
            self._thread.join(timeout=10)

    # --- what worker threads call ----------------------------------------------------

    def claim(self, job_id: str, attempt: int, redelivered: bool) -> ClaimedAttempt | None:
        """The claimed attempt, or None when it is not this worker's to run."""
        return self.claim_later(job_id, attempt, redelivered).result()

    def claim_later(
        self, job_id: str, attempt: int, redelivered: bool
    ) -> Future[ClaimedAttempt | None]:
        """`claim` without waiting: its answer, in a future (claim on delivery)."""
        answer: Future[ClaimedAttempt | None] = self._enqueue(
            ClaimRequest(job_id, attempt, redelivered)
        )
        return answer

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

    def finish_later(
        self, end: AttemptEnd, on_recorded: Callable[[Outcome | None], None] | None = None
    ) -> None:
        """Record a succeeded attempt's end without waiting: the writer retries it until
        PostgreSQL has it, then calls `on_recorded` with its outcome (None when the attempt
        was no longer running) on the writer thread."""
        self._ensure_started()
        self._requests.put(_Request(end, None, on_recorded))

    def drain(self) -> None:
        """Wait until everything queued before this call has been flushed once, and what
        those flushes admitted has been published."""
        self._submit(None)
        self._publisher.drain()

    def give_back_running(self) -> int:
        """At shutdown: end every attempt this process claimed and has not finished as
        INTERRUPTED (retried at once, not counted), which returns their tokens."""
        self.drain()  # ends recorded later are recorded first: those attempts are done
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

    def _submit(self, item: ClaimRequest | AttemptEnd | None) -> Any:
        return self._enqueue(item).result()

    def _enqueue(self, item: ClaimRequest | AttemptEnd | None) -> Future[Any]:
        self._ensure_started()
        answer: Future[Any] = Future()
        self._requests.put(_Request(item, answer))
        return answer

    # --- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        next_heartbeat = time.monotonic()
        stopping = False
        while not stopping:
            now = time.monotonic()
            if now >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + self._settings.heartbeat_seconds
            batch = self._due_retries(now)
            wait_until = min([next_heartbeat, *(due for due, _ in self._retries)])
            try:
                if batch:
                    first = self._requests.get_nowait()
                else:
                    first = self._requests.get(timeout=max(0.0, wait_until - time.monotonic()))
            except queue.Empty:
                first = None
            if first is _STOP:
                stopping = True
            elif first is not None:
                batch.append(first)
                stopping = self._collect(batch)
            if not batch:
                continue
            try:
                self._flush(batch)
            except Exception as error:  # never let the thread die: every thread waits on it
                log.exception("writer_flush_failed", size=len(batch))
                for request in batch:
                    self._fail(request, error)
        self._connection.close()

    def _collect(self, batch: list[_Request]) -> bool:
        """Add the waiting requests to `batch`; True when a stop request came among them.

        Under load (more requests already waiting behind the first) it lingers up to
        `writer_linger_ms` for more, until the batch holds WRITER_ENOUGH or a claim of every
        worker thread: fewer, larger flushes. A request that finds the writer idle is
        flushed at once.
        """
        linger_until = 0.0
        if not self._requests.empty():
            linger_until = time.monotonic() + self._settings.writer_linger_ms / 1000
        claims = sum(1 for request in batch if isinstance(request.item, ClaimRequest))
        while len(batch) < MAX_BATCH:
            try:
                following = self._requests.get_nowait()
            except queue.Empty:
                remaining = linger_until - time.monotonic()
                every_thread_waits = self.threads is not None and claims >= self.threads
                if len(batch) >= WRITER_ENOUGH or remaining <= 0 or every_thread_waits:
                    return False
                try:
                    following = self._requests.get(timeout=remaining)
                except queue.Empty:
                    return False
            if following is _STOP:
                return True  # stop after this batch
            batch.append(following)
            claims += isinstance(following.item, ClaimRequest)
        return False

    def _due_retries(self, now: float) -> list[_Request]:
        due = [request for at, request in self._retries if at <= now]
        if due:
            self._retries = [(at, request) for at, request in self._retries if at > now]
        return due

    def _fail(self, request: _Request, error: BaseException) -> None:
        """A request whose flush failed: the waiting thread gets the error; an end recorded
        later is tried again with backoff (its thread has moved on)."""
        if request.answer is not None:
            if not request.answer.done():
                request.answer.set_exception(error)
            return
        delay = FINISH_RETRY_DELAYS[min(request.tries, len(FINISH_RETRY_DELAYS) - 1)]
        request.tries += 1
        assert isinstance(request.item, AttemptEnd)
        log.warning(
            "finish_retrying",
            job_id=request.item.job_id,
            attempt=request.item.attempt,
            error=type(error).__name__,
            retry_in=delay,
        )
        self._retries.append((time.monotonic() + delay, request))

    def _heartbeat(self) -> None:
        """Renew the leases of this process's running attempts (see lease_ttl_seconds),
        after giving back the claims no thread heard of."""
        try:
            with self._engine.begin() as conn:
                now = datetime.now(UTC)
                self._give_back_unheard(conn, now)
                leases_repo.renew_leases(conn, self._worker, self._settings.lease_ttl_seconds, now)
            self._unheard = []
        except Exception as error:  # PostgreSQL away: no lease can expire meanwhile either
            log.warning("heartbeat_failed", error=type(error).__name__)

    def _remember_unheard(self, batch: list[_Request], at: datetime) -> None:
        """The claims of a flush that lost its connection on every try (its threads get the
        error and skip their messages). If PostgreSQL committed the flush before the
        connection went, their leases are started in this worker's name at the flush's
        time `at`, and no thread will ever run them."""
        claims = [
            (r.item.job_id, r.item.attempt) for r in batch if isinstance(r.item, ClaimRequest)
        ]
        if claims:
            self._unheard.append((at, claims))

    def _give_back_unheard(self, conn: sa.Connection, now: datetime) -> None:
        """Withdraw the unheard claims that did commit (only leases started at their flush's
        time: a later claim of the same attempt, which a thread did hear of, stays). The
        attempts are admitted again, unclaimed; maintenance publishes them again."""
        for claimed_at, claims in self._unheard:
            withdrawn = lifecycle.withdraw_unstarted(
                conn,
                self._settings,
                claims,
                self._worker,
                now,
                claimed_at=claimed_at,
                why="lost PostgreSQL's answer to its claim; the attempt never started",
            )
            for change in withdrawn:
                log.warning("unheard_claim_withdrawn", job_id=change.job_id, attempt=change.attempt)

    def _flush(self, batch: list[_Request]) -> None:
        started = time.perf_counter()
        at = self._flush_time()
        try:
            result = self._apply(batch, at)
        except sa.exc.DBAPIError as error:
            if len(batch) > 1 and not error.connection_invalidated:
                # One bad item must not fail the others: apply each on its own.
                for request in batch:
                    self._flush([request])
                return
            if error.connection_invalidated:
                self._remember_unheard(batch, at)
            for request in batch:
                self._fail(request, error)
            return
        except Exception as error:  # a bug: answer everyone rather than hang their threads
            log.exception("writer_batch_failed", size=len(batch))
            for request in batch:
                self._fail(request, error)
            return
        log.debug(
            "writer_flush",
            size=len(batch),
            admitted=len(result.admitted),
            transaction_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        for request in batch:
            self._answer(request, result)

    def _answer(self, request: _Request, result: FlushResult) -> None:
        item = request.item
        if item is None:
            answer: Any = None
        elif isinstance(item, ClaimRequest):
            # Two deliveries of one attempt in one batch: only the first runs it.
            answer = result.claimed.pop((item.job_id, item.attempt), None)
        else:
            answer = result.outcomes.get((item.job_id, item.attempt))
        if request.answer is not None:
            request.answer.set_result(answer)
        elif request.on_recorded is not None:
            try:
                request.on_recorded(answer)
            except Exception:  # metrics only: never fail the writer for them
                log.exception("on_recorded_failed")

    def _flush_time(self) -> datetime:
        """This flush's time, later than every earlier flush's of this process, even if the
        clock steps back. A flush run again after a lost commit answer keeps its time, and
        the claim takes back a lease this worker started at this very time (migration 0017):
        so that time must name one flush."""
        now = max(datetime.now(UTC), self._last_flush_time + timedelta(microseconds=1))
        self._last_flush_time = now
        return now

    def _apply(self, batch: list[_Request], now: datetime) -> FlushResult:
        claims = [r.item for r in batch if isinstance(r.item, ClaimRequest)]
        ends = split_ends([r.item for r in batch if isinstance(r.item, AttemptEnd)])
        if not claims and not ends.succeeded and not ends.others:
            return FlushResult()  # barriers only

        runs = 0

        def flush(conn: sa.Connection) -> FlushResult:
            nonlocal runs
            runs += 1
            result = apply_flush(
                conn, self._settings, self._worker, claims, ends, now, dead_letter_body
            )
            if runs > 1 and (ends.succeeded or ends.others):
                _add_first_run_admissions(conn, result, now)
            return result

        # Claims and successes only: one statement, its own durable transaction. What it
        # admitted goes to the publisher thread once committed.
        run = self._connection.run if not ends.others else in_transaction
        return commit_then_publish(self._engine, self._publisher, flush, run)


def _add_first_run_admissions(conn: sa.Connection, result: FlushResult, at: datetime) -> None:
    """A flush run again after a lost commit answer: what its first run admitted (leases
    granted at the flush's time `at`, unstarted) is published too, rather than by
    maintenance after republish_after_seconds. A lease granted at the same instant by
    another process is published twice, which the claim makes harmless."""
    known = {(a.job_id, a.attempt) for a in result.admitted}
    result.admitted += [
        a for a in leases_repo.granted_unstarted(conn, at) if (a.job_id, a.attempt) not in known
    ]
