"""Python client and `taskq` command line for the Smart Task Queue API."""

from taskq_client.aio import AsyncTaskQueueClient
from taskq_client.client import TaskQueueClient
from taskq_client.errors import (
    ApiError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    NotFound,
    TaskQueueError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from taskq_client.models import (
    TERMINAL_STATUSES,
    DeadLetter,
    Job,
    JobAccepted,
    JobEvent,
    JobRequest,
    JobSummary,
    LogEntry,
)
from taskq_client.retrying import RetryPolicy

__all__ = [
    "TERMINAL_STATUSES",
    "ApiError",
    "AsyncTaskQueueClient",
    "Conflict",
    "ConnectionFailed",
    "DeadLetter",
    "Forbidden",
    "Invalid",
    "Job",
    "JobAccepted",
    "JobEvent",
    "JobRequest",
    "JobSummary",
    "LogEntry",
    "NotFound",
    "RetryPolicy",
    "TaskQueueClient",
    "TaskQueueError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
