"""The registry of job types and the simulated handlers.

A handler is an async function `(payload, context) -> result`. Real handlers register
the same way as the simulated ones: `@job_type("name", default_duration=...)`.
Payload keys every simulated handler honours (SPEC "Simulated job types"):
`duration_seconds`, `fail_times`, `error`, `retryable_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


class RetryableJobError(Exception):
    """The attempt failed but another attempt may succeed."""


class NonRetryableJobError(Exception):
    """The job can never succeed: fail it at once, without retries."""


@dataclass(frozen=True)
class JobContext:
    job_id: str
    attempt: int
    duration_scale: float


Handler = Callable[[Mapping[str, Any], JobContext], Awaitable[Any]]


@dataclass(frozen=True)
class JobType:
    name: str
    default_duration: float
    description: str
    handler: Handler


_registry: dict[str, JobType] = {}


def job_type(
    name: str, *, default_duration: float = 0.0, description: str = ""
) -> Callable[[Handler], Handler]:
    """Register `handler` as the implementation of job type `name`."""

    def register(handler: Handler) -> Handler:
        if name in _registry:
            raise ValueError(f"job type {name!r} is already registered")
        _registry[name] = JobType(name, default_duration, description, handler)
        return handler

    return register


def get_job_type(name: str) -> JobType | None:
    return _registry.get(name)


def registered_job_types() -> list[JobType]:
    return sorted(_registry.values(), key=lambda jt: jt.name)


def simulated(default_duration: float) -> Handler:
    """A handler that sleeps for its duration and honours the failure-injection keys."""

    async def handle(payload: Mapping[str, Any], context: JobContext) -> dict[str, Any]:
        if "error" in payload:
            raise NonRetryableJobError(str(payload["error"]))
        if "retryable_error" in payload:
            raise RetryableJobError(str(payload["retryable_error"]))
        fail_times = int(payload.get("fail_times", 0))
        if context.attempt <= fail_times:
            raise RetryableJobError(f"simulated failure {context.attempt} of {fail_times}")
        if "duration_seconds" in payload:
            duration = float(payload["duration_seconds"])  # exact, not scaled
        else:
            duration = default_duration * context.duration_scale
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


@job_type("invalid_operation", description="always fails with a non-retryable error")
async def invalid_operation(payload: Mapping[str, Any], context: JobContext) -> None:
    raise NonRetryableJobError(str(payload.get("error", "invalid operation")))
