"""One thread per worker process that watches every running attempt.

For each attempt it enforces the time limit, polls whether a cancel was requested, and
flushes the context's buffered log lines and progress. Polls and flushes touch PostgreSQL,
so they run on a small pool of their own: a slow database delays neither time limits nor
the other attempts. Registering an attempt costs a dict insert, not a thread, so short
jobs pay almost nothing.

Stopping an attempt sets its context's `stop_requested` and calls its `interrupt`
callable (the runner decides how: cancel an asyncio task, or raise in a thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from queue_service.job_context import JobContext
from queue_service.logging import get_logger
from queue_service.retry_policy import AttemptResult

log = get_logger(__name__)

IO_THREADS = 4
# The longest the monitor sleeps with nothing due. It sleeps no longer than the shortest
# cancel poll interval it has seen either (see `add`).
IDLE_WAKE_SECONDS = 1.0


class Watch:
    """The supervision of one attempt. `reason` is set once, by `stop`."""

    def __init__(
        self,
        context: JobContext,
        timeout_seconds: float,
        cancel_requested: Callable[[], bool],
        poll_seconds: float,
    ) -> None:
        now = time.monotonic()
        self.context = context
        self.deadline = now + timeout_seconds
        self.cancel_requested = cancel_requested
        self.poll_seconds = poll_seconds
        self.next_poll = now + poll_seconds
        self.interrupt: Callable[[], None] = lambda: None
        self.lock = threading.Lock()
        self.reason: AttemptResult | None = None
        self.finished = False
        self.polling = False
        self.flushing = False

    def stop(self, reason: AttemptResult) -> None:
        """Ask the attempt to stop, unless it already finished or was asked before."""
        with self.lock:
            if self.finished or self.reason is not None:
                return
            self.reason = reason
            self.context.request_stop()
            self.interrupt()
        log.info(
            "attempt_stopping",
            job_id=self.context.job_id,
            attempt=self.context.attempt,
            reason=reason.value,
        )

    def finish(self) -> AttemptResult | None:
        """The handler returned: no stop may start after this. Returns the stop reason."""
        with self.lock:
            self.finished = True
            return self.reason


class AttemptMonitor:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        # When the monitor thread wakes next on its own (it sleeps until the earliest due
        # time of its watches): a new watch due later needs no wake-up, and most are.
        self._wakes_at = 0.0
        # How long it sleeps with no watch due: the shortest poll interval seen, so that a
        # watch added while it sleeps is due (first poll) no earlier than its wake-up. With
        # a longer sleep every new watch woke it, and a short job's watch was gone by then:
        # one wake-up of this thread per job for nothing (95 % of registrations, no-op jobs).
        self._idle_seconds = IDLE_WAKE_SECONDS
        self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="taskq-attempt-io")
        self._thread = threading.Thread(target=self._run, name="taskq-attempt-monitor")
        self._thread.daemon = True
        self._thread.start()

    def add(self, watch: Watch) -> None:
        watch.context.on_buffered = self.wake
        with self._cond:
            self._watches.add(watch)
            self._idle_seconds = min(self._idle_seconds, watch.poll_seconds)
            if min(watch.deadline, watch.next_poll) < self._wakes_at:
                self._cond.notify()

    def remove(self, watch: Watch) -> None:
        watch.context.on_buffered = None
        with self._cond:
            self._watches.discard(watch)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                expired, polls, flushes = self._due(time.monotonic())
                if not (expired or polls or flushes):
                    self._wakes_at = self._next_due()
                    self._cond.wait(max(0.0, self._wakes_at - time.monotonic()))
                    continue
            for watch in expired:
                watch.stop(AttemptResult.TIMEOUT)
            for watch in polls:
                self._io.submit(self._poll, watch)
            for watch in flushes:
                self._io.submit(self._flush, watch)

    def _due(self, now: float) -> tuple[list[Watch], list[Watch], list[Watch]]:
        expired, polls, flushes = [], [], []
        for watch in self._watches:
            if watch.reason is None:
                if watch.deadline <= now:
                    expired.append(watch)
                elif not watch.polling and watch.next_poll <= now:
                    watch.polling = True
                    polls.append(watch)
            flush_at = watch.context.flush_due_at()
            if not watch.flushing and flush_at is not None and flush_at <= now:
                watch.flushing = True
                flushes.append(watch)
        return expired, polls, flushes

    def _next_due(self) -> float:
        times = [time.monotonic() + self._idle_seconds]
        for watch in self._watches:
            if watch.reason is None:
                times.append(watch.deadline)
                if not watch.polling:
                    times.append(watch.next_poll)
            flush_at = watch.context.flush_due_at()
            if not watch.flushing and flush_at is not None:
                times.append(flush_at)
        return min(times)

    def _poll(self, watch: Watch) -> None:
        try:
            if watch.cancel_requested():
                watch.stop(AttemptResult.CANCELLED)
        except Exception as error:
            # A poll that cannot reach PostgreSQL is not a cancel: keep running, ask again.
            log.warning(
                "cancel_poll_failed",
                job_id=watch.context.job_id,
                attempt=watch.context.attempt,
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            with self._cond:
                watch.next_poll = time.monotonic() + watch.poll_seconds
                watch.polling = False
                self._cond.notify()

    def _flush(self, watch: Watch) -> None:
        try:
            watch.context.flush()
        finally:
            with self._cond:
                watch.flushing = False
                self._cond.notify()


_monitor: AttemptMonitor | None = None
_monitor_lock = threading.Lock()


def get_monitor() -> AttemptMonitor:
    """The process's monitor, started on first use."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = AttemptMonitor()
        return _monitor
