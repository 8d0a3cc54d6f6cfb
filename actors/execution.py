"""Running one attempt of a job's handler under its time limit and cancellation.

Handlers are coroutines. The attempt runs in a fresh event loop on the worker thread;
on timeout or cancellation the coroutine is cancelled, so no work goes on in the
background (Dramatiq's TimeLimit interrupts threads with an async exception instead,
which cannot stop a coroutine cleanly and knows nothing of per-job limits).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from queue_service.job_types import JobContext, JobType, NonRetryableJobError, RetryableJobError
from queue_service.retry_policy import AttemptResult


@dataclass(frozen=True)
class AttemptReport:
    result: AttemptResult
    error: str | None = None
    value: Any = None


def run_attempt(
    job_type: JobType,
    payload: Mapping[str, Any],
    context: JobContext,
    timeout_seconds: float,
    cancel_requested: Callable[[], bool],
    poll_seconds: float,
) -> AttemptReport:
    """Run the handler to its end, its time limit, or a cancellation request."""
    return asyncio.run(
        _run(job_type, payload, context, timeout_seconds, cancel_requested, poll_seconds)
    )


async def _run(
    job_type: JobType,
    payload: Mapping[str, Any],
    context: JobContext,
    timeout_seconds: float,
    cancel_requested: Callable[[], bool],
    poll_seconds: float,
) -> AttemptReport:
    work = asyncio.ensure_future(job_type.handler(payload, context))
    watcher = asyncio.create_task(_watch_cancellation(cancel_requested, poll_seconds))
    done, _ = await asyncio.wait(
        {work, watcher}, timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED
    )
    watcher.cancel()
    if work in done:
        return _report(work)
    work.cancel()
    await asyncio.gather(work, watcher, return_exceptions=True)
    if watcher in done:
        return AttemptReport(AttemptResult.CANCELLED, "cancelled while running")
    return AttemptReport(AttemptResult.TIMEOUT, f"timed out after {timeout_seconds:g} s")


def _report(work: asyncio.Task[Any]) -> AttemptReport:
    error = work.exception()
    if error is None:
        return AttemptReport(AttemptResult.SUCCEEDED, value=work.result())
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, NonRetryableJobError):
        return AttemptReport(AttemptResult.PERMANENT_ERROR, message)
    if isinstance(error, RetryableJobError):
        return AttemptReport(AttemptResult.RETRYABLE_ERROR, message)
    # An unexpected exception may be transient: it spends an attempt, like a retryable one.
    return AttemptReport(AttemptResult.RETRYABLE_ERROR, message)


async def _watch_cancellation(cancel_requested: Callable[[], bool], poll_seconds: float) -> None:
    while True:
        await asyncio.sleep(poll_seconds)
        if await asyncio.to_thread(cancel_requested):
            return
