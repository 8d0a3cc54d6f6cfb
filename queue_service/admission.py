"""The admission decision: which ready jobs start, given the free resource tokens.

The caller reads the best-ranked ready jobs (ordered by `admission_rank`, then submission
order) and the pool row under a lock, calls `decide_admission`, and records the result.
The rules, in order: a paused pool starts nothing; candidates start in rank order while they
fit; one that does not fit is passed by smaller ones behind it (backfill) unless it has
waited longer than the starvation threshold, in which case the tokens are held for it and
nothing behind it starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

from queue_service.model import Priority, WaitingReason

if TYPE_CHECKING:
    from queue_service.settings import Settings


@dataclass(frozen=True)
class Candidate:
    """A ready job as admission sees it."""

    job_id: str
    priority: Priority
    cpu_units: int
    memory_mb: int
    pending_since: datetime


@dataclass(frozen=True)
class PoolState:
    """The shared token pool at the moment of the decision."""

    cpu_capacity: int
    memory_capacity: int
    cpu_used: int
    memory_used: int
    paused: bool

    @property
    def cpu_free(self) -> int:
        return self.cpu_capacity - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory_capacity - self.memory_used


@dataclass(frozen=True)
class AdmissionPolicy:
    """The fairness thresholds: how fast waiting earns rank, and when a job is starved."""

    aging_seconds_per_level: float
    starvation_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionPolicy:
        """The policy configured by `TASKQ_AGING_SECONDS_PER_LEVEL` and `..._STARVATION_SECONDS`."""
        return cls(
            aging_seconds_per_level=settings.aging_seconds_per_level,
            starvation_seconds=settings.starvation_seconds,
        )


@dataclass(frozen=True)
class AdmissionDecision:
    """Which candidates start, why each other one waits, and the pool usage afterwards."""

    started: tuple[Candidate, ...]
    waiting: Mapping[str, str]  # job_id -> waiting reason, e.g. "insufficient_cpu"
    cpu_used: int
    memory_used: int


def admission_rank(priority: Priority, pending_since: datetime, policy: AdmissionPolicy) -> float:
    """The sort key of a ready job: lower starts first.

    A job ranks as if it had become ready `level * aging_seconds_per_level` seconds earlier.
    The key is fixed when the job becomes ready, so an index can order the ready jobs, and
    aging needs no rewrites: a job that has waited long enough outranks every newcomer of a
    higher priority. Ties are broken by submission order, outside this module.
    """
    return pending_since.timestamp() - priority.level * policy.aging_seconds_per_level


def decide_admission(
    candidates: Sequence[Candidate], pool: PoolState, now: datetime, policy: AdmissionPolicy
) -> AdmissionDecision:
    """Decide which of `candidates` (best ranked first) start now.

    Every candidate ends up either in `started` or in `waiting` with one of the reasons
    `paused`, `insufficient_cpu` (checked first), `insufficient_memory` or
    `reserved_for:<job_id>`.
    """
    if pool.paused:
        return AdmissionDecision(
            started=(),
            waiting=MappingProxyType(
                {candidate.job_id: WaitingReason.PAUSED.value for candidate in candidates}
            ),
            cpu_used=pool.cpu_used,
            memory_used=pool.memory_used,
        )

    cpu_free = pool.cpu_free
    memory_free = pool.memory_free
    started: list[Candidate] = []
    waiting: dict[str, str] = {}
    reserved_for: str | None = None
    for candidate in candidates:
        if reserved_for is not None:
            waiting[candidate.job_id] = f"{WaitingReason.RESERVED_FOR.value}:{reserved_for}"
            continue
        if candidate.cpu_units <= cpu_free and candidate.memory_mb <= memory_free:
            started.append(candidate)
            cpu_free -= candidate.cpu_units
            memory_free -= candidate.memory_mb
            continue
        short_of = (
            WaitingReason.INSUFFICIENT_CPU
            if candidate.cpu_units > cpu_free
            else WaitingReason.INSUFFICIENT_MEMORY
        )
        waiting[candidate.job_id] = short_of.value
        # A job larger than the whole pool can never start: holding tokens for it would
        # stall the pool for good, so it never reserves (submission rejects such jobs anyway).
        if _is_starved(candidate, now, policy) and _fits_capacity(candidate, pool):
            reserved_for = candidate.job_id

    return AdmissionDecision(
        started=tuple(started),
        waiting=MappingProxyType(waiting),
        cpu_used=pool.cpu_used + sum(candidate.cpu_units for candidate in started),
        memory_used=pool.memory_used + sum(candidate.memory_mb for candidate in started),
    )


def _is_starved(candidate: Candidate, now: datetime, policy: AdmissionPolicy) -> bool:
    return (now - candidate.pending_since).total_seconds() > policy.starvation_seconds


def _fits_capacity(candidate: Candidate, pool: PoolState) -> bool:
    return candidate.cpu_units <= pool.cpu_capacity and candidate.memory_mb <= pool.memory_capacity
