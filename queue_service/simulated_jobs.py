"""The simulated job types of SPEC "Simulated job types": one job module among others.

Listed in TASKQ_JOB_MODULES by default; drop it from the list to run only your own types.
Each sleeps for its default duration (times `TASKQ_DURATION_SCALE`) and honours the
payload keys `duration_seconds`, `fail_times`, `error` and `retryable_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from queue_service.job_context import JobContext
from queue_service.job_types import NonRetryableJobError, RetryableJobError, job_type


def simulated(
    default_duration: float,
) -> Callable[[Mapping[str, Any], JobContext], Awaitable[dict[str, Any]]]:
    """A handler that sleeps for its duration and honours the failure-injection keys."""

    async def handle(payload: Mapping[str, Any], ctx: JobContext) -> dict[str, Any]:
        if "error" in payload:
            raise NonRetryableJobError(str(payload["error"]))
        if "retryable_error" in payload:
            raise RetryableJobError(str(payload["retryable_error"]))
        fail_times = int(payload.get("fail_times", 0))
        if ctx.attempt <= fail_times:
            raise RetryableJobError(f"simulated failure {ctx.attempt} of {fail_times}")
        if "duration_seconds" in payload:
            duration = float(payload["duration_seconds"])  # exact, not scaled
        else:
            duration = default_duration * ctx.duration_scale
        if duration > 0:  # a no-op returns without a pass through the event loop
            await asyncio.sleep(duration)
        return {"slept_seconds": duration}

    return handle


_SIMULATED: dict[str, tuple[float, str]] = {
    "noop": (0.0, "does nothing"),
    "send_email": (0.5, "sends an e-mail"),
    "data_export": (5.0, "exports a data set"),
    "generate_report": (3.0, "renders a report"),
    "report_generation": (3.0, "renders a report"),
    "report": (2.0, "renders a report"),
    "data_fetch": (2.0, "fetches market data"),
    "data_processing": (3.0, "processes a batch of data"),
    "analysis": (2.0, "analyses data"),
    "notification": (0.5, "notifies users"),
    "quick_task": (0.2, "a short task"),
    "external_api": (1.0, "calls an external API"),
    "processing": (1.0, "generic processing"),
    "long_running": (30.0, "a long computation"),
}

for _name, (_duration, _description) in _SIMULATED.items():
    job_type(_name, default_duration=_duration, description=_description)(simulated(_duration))


@job_type("invalid_operation", default_duration=0.0, description="always fails at once")
async def invalid_operation(payload: Mapping[str, Any], ctx: JobContext) -> None:
    raise NonRetryableJobError(str(payload.get("error", "invalid operation")))
