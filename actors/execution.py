"""Running one attempt of a job's handler under its time limit and cancellation.

Sync handlers run in the worker thread; async handlers run on an event loop that belongs
to the worker thread, created on its first async job and reused after (not one loop per
attempt). The attempt monitor (actors/attempt_monitor.py) stops an attempt over its time
limit or asked to cancel: it sets `ctx.stop_requested` and
- for an async handler, cancels its task (it stops at its next `await`);
- for a sync handler, raises `AttemptInterrupted` inside the worker thread, as Dramatiq's
  TimeLimit does (`PyThreadState_SetAsyncExc`). Code blocked in C (a socket read,
  `time.sleep`) gets it only when that call returns; cooperative code can watch
  `ctx.should_stop()` instead. Either way the attempt ends as a timeout or a cancel.

The handler's return value must be JSON (no NaN or infinities), at most 64 KiB encoded
and nested at most 32 levels deep;
anything else fails the job without retry, as does an exception listed in the type's
`non_retryable` (or a `NonRetryableJobError`). Other exceptions spend an attempt. A
failure's traceback goes to the job's logs (a `job_log` line at level error) and into
`AttemptReport.traceback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import math
import selectors
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pydantic

from actors.attempt_monitor import Watch, get_monitor
from queue_service.job_context import JobContext
from queue_service.job_types import JobType, NonRetryableJobError
from queue_service.json_limits import MAX_JSON_DEPTH, json_depth
from queue_service.retry_policy import AttemptResult

MAX_RESULT_BYTES = 64 * 1024
MAX_TRACEBACK_CHARS = 16_000


class AttemptInterrupted(BaseException):
    """Raised inside a sync handler's thread to stop it. A BaseException, so that a
    handler's `except Exception` does not swallow it."""


class ResultRejected(Exception):
    """The handler's return value cannot be stored as the job's result."""


@dataclass(frozen=True)
class AttemptReport:
    result: AttemptResult
    error: str | None = None
    value: Any = None
    traceback: str | None = None


@dataclass
class _Outcome:
    value: Any = None
    error: BaseException | None = None
    stopped: AttemptResult | None = None


def run_attempt(
    job_type: JobType,
    payload: Mapping[str, Any],
    context: JobContext,
    timeout_seconds: float,
    cancel_requested: Callable[[], bool],
    poll_seconds: float,
) -> AttemptReport:
    """Run the handler to its end, its time limit, or a cancellation request."""
    try:
        try:
            argument = job_type.payload_for_handler(payload)
        except pydantic.ValidationError as error:
            report = AttemptReport(
                AttemptResult.PERMANENT_ERROR,
                f"the payload does not match job type {job_type.name!r}: {error}",
            )
        else:
            watch = Watch(context, timeout_seconds, cancel_requested, poll_seconds)
            run = _run_async if job_type.is_async else _run_sync
            report = _report(job_type, run(job_type, argument, context, watch), timeout_seconds)
        if report.traceback is not None:
            context.logger.error(report.error or "failed", traceback=report.traceback)
    finally:
        context.close()
    return report


# --- sync handlers: in the worker thread, stopped by an exception raised in it ----------


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Schedule `exception` in the thread (None: withdraw a scheduled one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
    )


def _run_sync(job_type: JobType, argument: Any, context: JobContext, watch: Watch) -> _Outcome:
    thread_id = threading.get_ident()
    watch.interrupt = lambda: _raise_in_thread(thread_id, AttemptInterrupted)
    monitor = get_monitor()
    outcome: _Outcome | None = None
    delivered = False
    monitor.add(watch)
    try:
        # The interrupt may land anywhere until `finish` closes the door: in the handler,
        # or in this bookkeeping, once at most. Catch it wherever it lands.
        while True:
            try:
                if outcome is None:
                    try:
                        outcome = _Outcome(value=job_type.handler(argument, context))
                    except Exception as error:
                        outcome = _Outcome(error=error)
                reason = watch.finish()
                if reason is not None and not delivered:
                    _raise_in_thread(thread_id, None)
                outcome.stopped = reason
                return outcome
            except AttemptInterrupted as error:
                delivered = True
                if outcome is None:
                    outcome = _Outcome(error=error)
    finally:
        monitor.remove(watch)


# --- async handlers: on the worker thread's own event loop, stopped by cancelling -------

_thread_state = threading.local()


class _AttemptSelector(selectors.DefaultSelector):
    """The selector of a worker thread's loop: a poll that may not wait is skipped while
    the loop watches no file but its own wake-up pipe.

    Running an attempt takes the loop through at least two passes, each polling with a
    zero timeout (the task's step, then the stop): two system calls that release the GIL,
    in a process whose threads contend for it, for a handler that may never touch a file.
    With only the wake-up pipe registered nothing can be ready that the loop's ready
    queue does not already hold (`call_soon_threadsafe` queues its callback before it
    writes to the pipe); the pipe is drained by the next poll that waits. Once a handler
    opens a socket, every poll happens as usual.
    """

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0 and len(self.get_map()) <= 1:
            return []
        return super().select(timeout)


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This worker thread's event loop, created once and reused by its later attempts."""
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.SelectorEventLoop(_AttemptSelector())
        asyncio.set_event_loop(loop)
        _thread_state.loop = loop
    return loop


def _run_async(job_type: JobType, argument: Any, context: JobContext, watch: Watch) -> _Outcome:
    if asyncio._get_running_loop() is not None:
        # This thread already runs an event loop (not a worker thread: e.g. a caller using
        # Playwright's sync API): run the attempt on one helper thread and its loop.
        return _HELPER.submit(_run_on_thread_loop, job_type, argument, context, watch).result()
    return _run_on_thread_loop(job_type, argument, context, watch)


_HELPER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskq-async-attempt")


def _run_on_thread_loop(
    job_type: JobType, argument: Any, context: JobContext, watch: Watch
) -> _Outcome:
    loop = _thread_loop()
    task = loop.create_task(job_type.handler(argument, context))

    def interrupt() -> None:
        loop.call_soon_threadsafe(task.cancel)

    watch.interrupt = interrupt
    monitor = get_monitor()
    monitor.add(watch)
    try:
        # The task's own outcome is read below; here only KeyboardInterrupt and the like.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            loop.run_until_complete(task)
    finally:
        reason = watch.finish()
        monitor.remove(watch)
        _cancel_leftovers(loop)
    if task.cancelled():
        error: BaseException | None = asyncio.CancelledError("the handler was cancelled")
        return _Outcome(error=error, stopped=reason)
    error = task.exception()
    return _Outcome(value=None if error else task.result(), error=error, stopped=reason)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Tasks the handler started and left running do not leak into the next attempt."""
    leftovers = asyncio.all_tasks(loop)
    if leftovers:
        for task in leftovers:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


# --- the report -------------------------------------------------------------------------


def _report(job_type: JobType, outcome: _Outcome, timeout_seconds: float) -> AttemptReport:
    if outcome.stopped is AttemptResult.TIMEOUT:
        return AttemptReport(AttemptResult.TIMEOUT, f"timed out after {timeout_seconds:g} s")
    if outcome.stopped is AttemptResult.CANCELLED:
        return AttemptReport(AttemptResult.CANCELLED, "cancelled while running")
    error = outcome.error
    if error is None:
        try:
            return AttemptReport(AttemptResult.SUCCEEDED, value=storable_result(outcome.value))
        except ResultRejected as rejected:
            return AttemptReport(AttemptResult.PERMANENT_ERROR, str(rejected))
    message = f"{type(error).__name__}: {error}"
    formatted = "".join(traceback.format_exception(error))[-MAX_TRACEBACK_CHARS:]
    if isinstance(error, (NonRetryableJobError, *job_type.non_retryable)):
        return AttemptReport(AttemptResult.PERMANENT_ERROR, message, traceback=formatted)
    # Any other exception may be transient: it spends an attempt.
    return AttemptReport(AttemptResult.RETRYABLE_ERROR, message, traceback=formatted)


# A flat result this small skips the checks' three passes (encode, decode, depth): 16
# entries of 256-character strings stay under MAX_RESULT_BYTES even with every character
# escaped (6 bytes each).
_FLAT_MAX_ENTRIES = 16
_FLAT_MAX_STRING = 256
# Key and value of every entry at their longest, escaped, plus room for the punctuation.
assert _FLAT_MAX_ENTRIES * (2 * _FLAT_MAX_STRING * 6 + 64) <= MAX_RESULT_BYTES


def _flat_json(value: Any) -> bool:
    """True for None and for a small dict of scalars with str keys: stored as it is."""
    if value is None:
        return True
    if type(value) is not dict or len(value) > _FLAT_MAX_ENTRIES:
        return False
    for key, item in value.items():
        if type(key) is not str or len(key) > _FLAT_MAX_STRING:
            return False
        kind = type(item)
        if kind is str:
            if len(item) > _FLAT_MAX_STRING:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif item is not None and kind is not int and kind is not bool:
            return False
    return True


def storable_result(value: Any) -> Any:
    """The value as stored in `jobs.result`: JSON, at most 64 KiB, or ResultRejected."""
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    if _flat_json(value):
        return value  # already what JSON gives back, one level deep, small: nothing to check
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise ResultRejected(
            f"the result is nested too deep; the limit is {MAX_JSON_DEPTH} levels"
        ) from None
    except (TypeError, ValueError) as error:  # also a cycle ("Circular reference")
        raise ResultRejected(f"the result is not storable as JSON: {error}") from None
    size = len(text.encode())
    if size > MAX_RESULT_BYTES:
        raise ResultRejected(f"the result is {size} bytes; the limit is {MAX_RESULT_BYTES}")
    stored = json.loads(text)
    depth = json_depth(stored)
    if depth > MAX_JSON_DEPTH:
        raise ResultRejected(
            f"the result is nested {depth} levels deep; the limit is {MAX_JSON_DEPTH}"
        )
    return stored
