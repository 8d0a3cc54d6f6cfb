"""What the API answers, as pydantic models.

Unknown fields are kept (`extra="allow"`), so a client older than the server still sees
everything it is sent: `job.model_extra` or `job.model_dump()`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

Priority = Literal["critical", "high", "normal", "low"]
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class ResourceRequirements(TypedDict, total=False):
    cpu_units: int
    memory_mb: int


class RetryConfig(TypedDict, total=False):
    max_attempts: int
    backoff_multiplier: float
    initial_delay_seconds: float
    max_delay_seconds: float


class JobRequest(TypedDict, total=False):
    """The body of `POST /jobs`: every field optional (SPEC "Job model")."""

    job_id: str
    type: str
    priority: Priority
    payload: dict[str, Any]
    resource_requirements: ResourceRequirements
    depends_on: list[str]
    retry_config: RetryConfig
    timeout_seconds: float
    run_at: str
    idempotency_key: str


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Resources(_Model):
    cpu_units: int
    memory_mb: int


class JobAccepted(_Model):
    """The answer to a submission."""

    job_id: str
    status: str
    created_at: datetime
    priority: str
    position_in_queue: int | None = None
    created: bool = Field(default=True, description="false when an earlier submission matched")


class JobSummary(_Model):
    job_id: str
    type: str
    priority: str
    status: str
    attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resource_requirements: Resources
    cancel_reason: str | None = None
    last_error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Job(JobSummary):
    """`GET /jobs/{id}`: the whole job."""

    payload: dict[str, Any] = Field(default_factory=dict)
    retry_config: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: float | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None
    queued_at: datetime | None = None
    next_attempt_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    depends_on: list[str] = Field(default_factory=list)
    dependents: list[str] = Field(default_factory=list)
    blocked_by: list[str] = Field(default_factory=list)
    waiting_reason: str | None = None
    result: Any = None
    progress: Any = None


class JobPage(_Model):
    items: list[JobSummary]
    next_cursor: str | None = None


class LogEntry(_Model):
    at: datetime
    level: str
    event: str
    attempt: int
    message: str
    data: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(_Model):
    id: int
    job_id: str
    type: str
    reason: str
    attempts: int
    last_error: str | None = None
    died_at: datetime
    original_message: dict[str, Any] = Field(default_factory=dict)
    resolved_at: datetime | None = None
    resolution: str | None = None


class DeadLetterPage(_Model):
    items: list[DeadLetter]
    next_cursor: int | str | None = None


class SchedulerState(_Model):
    paused: bool


class JobEvent(_Model):
    """One message of the live stream (`WS /jobs/stream`)."""

    event: str
    job_id: str | None = None
    status: str | None = None
    previous_status: str | None = None
    attempt: int | None = None
    at: datetime | None = None
    type: str | None = None
