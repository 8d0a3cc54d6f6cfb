"""Request and response schemas, separate from the tables."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from queue_service.job_types import SubmissionDefaults, submission_defaults
from queue_service.json_limits import MAX_JSON_DEPTH, json_depth
from queue_service.model import JobStatus, Priority
from queue_service.submission import JobSpec

JOB_ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN, examples=["fetch_data_001"])]
MAX_PAYLOAD_BYTES = 64 * 1024
# Objects and arrays nested deeper than this in a payload are refused at submission
# (queue_service/json_limits.py says why).
MAX_PAYLOAD_DEPTH = MAX_JSON_DEPTH
MAX_BATCH = 10_000
# `position_in_queue` counts the ready jobs ahead up to this many: a longer backlog
# answers POSITION_CAP ("this many or more"), so a submission's cost does not grow with
# the backlog (counting up to 1,000 cost 3 ms of PostgreSQL CPU per request, measured).
POSITION_CAP = 100


def _iso_text(value: Any) -> Any:
    """Take only ISO-8601 text (or a datetime): pydantic would otherwise read a number, or
    a string of digits, as a Unix timestamp, which the documented format does not allow."""
    if isinstance(value, datetime):
        return value
    if (
        not isinstance(value, str)
        or not value[:4].isdigit()
        or value.strip(" +-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("expected an ISO-8601 date-time, e.g. 2030-01-31T09:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Numbers are `strict`: JSON `true` or `"5"` is not a number, though pydantic would take it.
class ResourceRequirements(_Strict):
    cpu_units: int = Field(default=1, strict=True, ge=1, le=1_000_000)
    memory_mb: int = Field(default=128, strict=True, ge=1, le=1_000_000_000)


class RetryConfigIn(_Strict):
    max_attempts: int = Field(default=3, strict=True, ge=1, le=100)
    backoff_multiplier: float = Field(default=2.0, strict=True, ge=1, le=1000, allow_inf_nan=False)
    initial_delay_seconds: float = Field(
        default=1.0, strict=True, ge=0, le=86_400 * 30, allow_inf_nan=False
    )
    max_delay_seconds: float = Field(
        default=300.0, strict=True, ge=0, le=86_400 * 30, allow_inf_nan=False
    )


class JobCreate(_Strict):
    """A job submission. Every field is optional. `timeout_seconds`, `retry_config` and
    `resource_requirements` (each field of the latter two) resolve as: the request's
    value, else the job type's default (GET /job-types), else the global default shown."""

    job_id: JobId | None = Field(
        default=None, description="client-chosen id; generated when absent"
    )
    type: str = Field(default="noop", max_length=128, description="a registered job type")
    priority: Priority = Priority.NORMAL
    payload: dict[str, Any] = Field(default_factory=dict, description="at most 64 KiB as JSON")
    resource_requirements: ResourceRequirements = Field(default_factory=ResourceRequirements)
    depends_on: list[JobId] = Field(default_factory=list, max_length=10_000)
    retry_config: RetryConfigIn = Field(default_factory=RetryConfigIn)
    timeout_seconds: float = Field(
        default=300.0, strict=True, gt=0, le=86_400 * 7, allow_inf_nan=False
    )
    run_at: IsoDateTime | None = Field(default=None, description="ISO-8601; naive means UTC")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("payload")
    @classmethod
    def _shallow(cls, value: dict[str, Any]) -> dict[str, Any]:
        depth = json_depth(value)
        if depth > MAX_PAYLOAD_DEPTH:
            raise ValueError(
                f"payload is nested {depth} levels deep; the limit is {MAX_PAYLOAD_DEPTH}"
            )
        return value

    @field_validator("run_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # In UTC, as stored: an offset must not push it outside years 1-9999, or the row
        # would be stored but could never be read back.
        try:
            return value.astimezone(UTC)
        except OverflowError as error:
            raise ValueError("run_at is out of range") from error

    def to_spec(
        self,
        idempotency_key: str | None = None,
        job_id: str | None = None,
        defaults: SubmissionDefaults | None = None,
    ) -> JobSpec:
        """The normalised submission; `job_id` names it when the request does not.
        `defaults` are `submission_defaults(self.type)`, when the caller has them."""
        # Request > type default > global default, field by field.
        if defaults is None:
            defaults = submission_defaults(self.type)
        given = self.model_fields_set
        retry = defaults.retry
        if "retry_config" in given:
            retry = replace(
                retry, **self.retry_config.model_dump(include=self.retry_config.model_fields_set)
            )
        resources = defaults.resources
        if "resource_requirements" in given:
            requested = self.resource_requirements
            resources = replace(
                resources, **requested.model_dump(include=requested.model_fields_set)
            )
        if retry.max_delay_seconds < 0:
            retry = replace(retry, max_delay_seconds=0.0)
        return JobSpec(
            type=self.type,
            job_id=self.job_id or job_id,
            priority=self.priority,
            payload=self.payload,
            resources=resources,
            depends_on=tuple(self.depends_on),
            retry=retry,
            timeout_seconds=(
                self.timeout_seconds if "timeout_seconds" in given else defaults.timeout_seconds
            ),
            run_at=self.run_at,
            idempotency_key=idempotency_key or self.idempotency_key,
        )


class BatchCreate(_Strict):
    jobs: list[JobCreate] = Field(min_length=1, max_length=MAX_BATCH)


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    created_at: datetime
    priority: Priority
    position_in_queue: int | None = Field(
        description=f"ready jobs ranked ahead of this one, counted up to {POSITION_CAP} "
        f"({POSITION_CAP} means {POSITION_CAP} or more); null unless it waits for tokens"
    )


class BatchAccepted(BaseModel):
    items: list[JobAccepted]


class JobProgress(BaseModel):
    fraction: float = Field(ge=0, le=1)
    message: str
    at: datetime


class JobSummary(BaseModel):
    job_id: str
    type: str
    priority: Priority
    status: JobStatus
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    resource_requirements: ResourceRequirements
    cancel_reason: str | None
    last_error: str | None


class JobPublic(JobSummary):
    payload: dict[str, Any]
    retry_config: RetryConfigIn
    timeout_seconds: float
    run_at: datetime | None
    idempotency_key: str | None
    max_attempts: int
    queued_at: datetime | None
    next_attempt_at: datetime | None
    cancel_requested_at: datetime | None
    depends_on: list[str]
    dependents: list[str]
    blocked_by: list[str] = Field(description="dependencies not completed yet")
    waiting_reason: str | None = Field(
        description="why it is not running: dependencies, scheduled, backoff, insufficient_cpu, "
        "insufficient_memory, reserved_for:<job_id>, paused, no_worker"
    )
    result: Any = None
    progress: JobProgress | None = Field(
        default=None, description="the latest progress the handler reported, if any"
    )


class JobsPublic(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None


class JobLogEntry(BaseModel):
    at: datetime
    level: str
    event: str
    attempt: int
    message: str
    data: dict[str, Any]


class JobLogs(BaseModel):
    items: list[JobLogEntry]


class JobTypePublic(BaseModel):
    type: str
    description: str
    default_duration_seconds: float | None = Field(
        description="how long one run usually takes, when the type says"
    )
    timeout_seconds: float = Field(description="used when a submission gives none")
    retry_config: RetryConfigIn = Field(description="used when a submission gives none")
    resource_requirements: ResourceRequirements = Field(
        description="used when a submission gives none"
    )
    non_retryable: list[str] = Field(description="exceptions that fail the job at once")
    payload_schema: dict[str, Any] | None = Field(
        description="JSON Schema of the payload, checked at submission"
    )


class JobTypes(BaseModel):
    items: list[JobTypePublic]


class DeadLetterPublic(BaseModel):
    id: int
    job_id: str
    type: str
    reason: str
    attempts: int
    last_error: str | None
    died_at: datetime
    original_message: dict[str, Any]
    resolved_at: datetime | None
    resolution: str | None


class DeadLettersPublic(BaseModel):
    items: list[DeadLetterPublic]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class SchedulerState(BaseModel):
    paused: bool


def summary_fields(job: Any) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "type": job.type,
        "priority": job.priority,
        "status": job.status,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "resource_requirements": {"cpu_units": job.cpu_units, "memory_mb": job.memory_mb},
        "cancel_reason": job.cancel_reason,
        "last_error": job.last_error,
    }
