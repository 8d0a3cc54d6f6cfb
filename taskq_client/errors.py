"""One exception root for everything the client raises.

An error answered by the API carries its body, `{"error": {"code", "message", "details"}}`,
as attributes; the subclasses only make the common statuses easy to catch.
"""

from __future__ import annotations

from typing import Any


class TaskQueueError(Exception):
    """Root of every error raised by the client."""


class ApiError(TaskQueueError):
    """The API answered with an error status."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details


class Unauthorized(ApiError):
    """401: no key, or a key the API does not know."""


class Forbidden(ApiError):
    """403: the key lacks the scope this call needs."""


class NotFound(ApiError):
    """404: no such job or dead letter."""


class Conflict(ApiError):
    """409: not cancellable, idempotency mismatch, duplicate job id, ..."""


class Invalid(ApiError):
    """413 or 422: the request can never succeed as it is (e.g. `dependency_cycle`)."""


class Unavailable(ApiError):
    """503: the API cannot reach PostgreSQL or RabbitMQ (retried before it is raised)."""


class ConnectionFailed(TaskQueueError):
    """The API could not be reached, after the retries."""


class WaitTimeout(TaskQueueError):
    """Jobs did not reach the awaited states in time; `jobs` holds their last known state."""

    def __init__(self, message: str, jobs: dict[str, Any]) -> None:
        super().__init__(message)
        self.jobs = jobs


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: Invalid,
    422: Invalid,
    503: Unavailable,
}


def api_error(status_code: int, body: Any, fallback_text: str = "") -> ApiError:
    """The exception for an error response, from its JSON body when it has the usual shape."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", "http_error"))
        message = str(error.get("message", ""))
        details = error.get("details")
    else:
        code, message, details = "http_error", fallback_text[:500], body
    cls = _BY_STATUS.get(status_code, ApiError)
    return cls(status_code, code, message, details)
