"""The job model: statuses, the allowed transitions, priorities and retry settings.

The migration's CHECK constraints are generated from these enums, so the database and
the code agree on the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is. The comment names the component that moves a job in and out."""

    BLOCKED = "blocked"  # in: submission (unfinished deps); out: completion of its last dep
    SCHEDULED = "scheduled"  # in: submission with a future run_at; out: maintenance when due
    PENDING = "pending"  # in: readiness; out: a worker claims the attempt (admission leases it)
    RUNNING = "running"  # in: the claim, which starts the lease; out: the attempt's end
    RETRYING = "retrying"  # in: completion of a failed attempt; out: maintenance when due
    COMPLETED = "completed"  # terminal
    FAILED = "failed"  # terminal (a dead-letter replay moves it back to pending)
    CANCELLED = "cancelled"  # terminal (a replay upstream moves `upstream_failed` back to blocked)


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLABLE_STATUSES = frozenset(
    {JobStatus.BLOCKED, JobStatus.SCHEDULED, JobStatus.PENDING, JobStatus.RETRYING}
)

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.BLOCKED: frozenset({JobStatus.SCHEDULED, JobStatus.PENDING, JobStatus.CANCELLED}),
    JobStatus.SCHEDULED: frozenset({JobStatus.PENDING, JobStatus.CANCELLED}),
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.COMPLETED,
            JobStatus.RETRYING,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PENDING,  # a claim withdrawn before its handler started
        }
    ),
    JobStatus.RETRYING: frozenset({JobStatus.PENDING, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.CANCELLED: frozenset({JobStatus.BLOCKED}),
}


def can_transition(source: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[source]


class Priority(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def level(self) -> int:
        """0 for low up to 3 for critical: higher runs first."""
        return _PRIORITY_LEVELS[self]

    @property
    def message_priority(self) -> int:
        """The AMQP message priority (0..MAX_MESSAGE_PRIORITY, higher is delivered first)."""
        return self.level * 3


_PRIORITY_LEVELS = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class WaitingReason(StrEnum):
    DEPENDENCIES = "dependencies"
    SCHEDULED = "scheduled"
    BACKOFF = "backoff"
    INSUFFICIENT_CPU = "insufficient_cpu"
    INSUFFICIENT_MEMORY = "insufficient_memory"
    RESERVED_FOR = "reserved_for"  # rendered as `reserved_for:<job_id>`
    PAUSED = "paused"
    NO_WORKER = "no_worker"


@dataclass(frozen=True)
class Admitted:
    """An attempt that holds its tokens and waits for a worker: what gets published."""

    job_id: str
    attempt: int
    priority: Priority


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3
    backoff_multiplier: float = 2.0
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 300.0


@dataclass(frozen=True)
class Resources:
    cpu_units: int = 1
    memory_mb: int = 128
