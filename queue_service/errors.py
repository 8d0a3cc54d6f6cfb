"""Domain errors: one root, one class per thing that can go wrong for a caller.

`api/errors.py` maps each `code` to an HTTP status in one place.
"""

from __future__ import annotations

from typing import Any


class TaskQueueError(Exception):
    """Root of every domain error. `code` is the stable snake_case name clients see."""

    code = "task_queue_error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class JobNotFound(TaskQueueError):
    code = "job_not_found"


class DeadLetterNotFound(TaskQueueError):
    code = "dead_letter_not_found"


class InvalidJob(TaskQueueError):
    code = "invalid_job"


class UnknownJobType(TaskQueueError):
    code = "unknown_job_type"


class InvalidPayload(TaskQueueError):
    """The payload does not match the job type's payload model."""

    code = "invalid_payload"


class ExceedsCapacity(TaskQueueError):
    code = "exceeds_capacity"


class PayloadTooLarge(TaskQueueError):
    code = "payload_too_large"


class UnknownDependency(TaskQueueError):
    code = "unknown_dependency"


class DependencyCycle(TaskQueueError):
    code = "dependency_cycle"


class DuplicateJobId(TaskQueueError):
    code = "duplicate_job_id"


class IdempotencyConflict(TaskQueueError):
    code = "idempotency_conflict"


class NotCancellable(TaskQueueError):
    code = "not_cancellable"


class NotReplayable(TaskQueueError):
    code = "not_replayable"


class ServiceUnavailable(TaskQueueError):
    code = "service_unavailable"


class InvalidCursor(TaskQueueError):
    code = "invalid_cursor"


class Unauthorized(TaskQueueError):
    """No API key, or one that is not configured."""

    code = "unauthorized"


class Forbidden(TaskQueueError):
    """A valid API key whose scope does not allow the call."""

    code = "forbidden"
