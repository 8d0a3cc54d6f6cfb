"""Unit tests of the admission decision: priority order, backfill, reservation, pause."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from queue_service.admission import (
    AdmissionPolicy,
    Candidate,
    PoolState,
    admission_rank,
    decide_admission,
)
from queue_service.model import Priority
from queue_service.settings import Settings

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
POLICY = AdmissionPolicy(aging_seconds_per_level=60.0, starvation_seconds=120.0)


def job(
    job_id: str,
    cpu: int = 1,
    memory: int = 256,
    priority: Priority = Priority.NORMAL,
    waited: float = 0.0,
) -> Candidate:
    """A candidate that became ready `waited` seconds before T0."""
    return Candidate(job_id, priority, cpu, memory, T0 - timedelta(seconds=waited))


def pool(
    cpu_used: int = 0,
    memory_used: int = 0,
    *,
    cpu: int = 8,
    memory: int = 4096,
    paused: bool = False,
) -> PoolState:
    return PoolState(cpu, memory, cpu_used, memory_used, paused)


def ranked(candidates: list[Candidate], policy: AdmissionPolicy = POLICY) -> list[Candidate]:
    """Order as the caller's index does: admission_rank, then submission (list) order."""
    position = {c.job_id: i for i, c in enumerate(candidates)}
    return sorted(
        candidates,
        key=lambda c: (admission_rank(c.priority, c.pending_since, policy), position[c.job_id]),
    )


@dataclass(frozen=True)
class Case:
    candidates: list[Candidate]
    pool: PoolState
    started: list[str]
    waiting: dict[str, str]
    used: tuple[int, int]  # cpu, memory after the decision


SCENARIO_4 = ranked(
    [job(f"heavy_{i}", 4, 2048, Priority.HIGH) for i in range(2)]
    + [job(f"heavy_{i}", 4, 2048) for i in range(2, 5)]
    + [job(f"light_{i}", 1, 256) for i in range(5)]
)
# After heavy_0 and heavy_1 started and heavy_0 finished: heavy_1 still holds 4 CPU / 2048 MB.
SCENARIO_4_AFTER_HEAVY_0 = [c for c in SCENARIO_4 if c.job_id not in {"heavy_0", "heavy_1"}]

CASES = {
    "scenario-4-first-decision": Case(
        SCENARIO_4,
        pool(),
        ["heavy_0", "heavy_1"],
        {c.job_id: "insufficient_cpu" for c in SCENARIO_4[2:]},
        (8, 4096),
    ),
    "scenario-4-after-heavy_0-finishes": Case(
        SCENARIO_4_AFTER_HEAVY_0,
        pool(4, 2048),
        ["heavy_2"],
        {c.job_id: "insufficient_cpu" for c in SCENARIO_4_AFTER_HEAVY_0[1:]},
        (8, 4096),
    ),
    "everything-fits": Case([job("a"), job("b", 2, 512)], pool(), ["a", "b"], {}, (3, 768)),
    "no-candidates": Case([], pool(3, 100), [], {}, (3, 100)),
    "backfill-past-a-head-that-does-not-fit": Case(
        [job("head", 4, 1024), job("s1"), job("s2"), job("s3"), job("s4")],
        pool(5, 1024),
        ["s1", "s2", "s3"],
        {"head": "insufficient_cpu", "s4": "insufficient_cpu"},
        (8, 1792),
    ),
    "memory-short-and-backfill": Case(
        [job("big", 1, 2048), job("small", 1, 512)],
        pool(0, 3072),
        ["small"],
        {"big": "insufficient_memory"},
        (1, 3584),
    ),
    "cpu-is-reported-before-memory": Case(
        [job("both", 4, 4096)], pool(6, 1024), [], {"both": "insufficient_cpu"}, (6, 1024)
    ),
    "rank-order-is-kept-not-size-order": Case(
        [job("first", 2, 256), job("second", 1, 256), job("third", 1, 256)],
        pool(6),
        ["first"],
        {"second": "insufficient_cpu", "third": "insufficient_cpu"},
        (8, 256),
    ),
    "starved-head-reserves-its-tokens": Case(
        [job("head", 4, 1024, waited=121), job("s1"), job("s2")],
        pool(5, 0),
        [],
        {"head": "insufficient_cpu", "s1": "reserved_for:head", "s2": "reserved_for:head"},
        (5, 0),
    ),
    "jobs-before-the-starved-one-still-start": Case(
        [job("early"), job("starved", 4, 1024, waited=500), job("late")],
        pool(4, 0),
        ["early"],
        {"starved": "insufficient_cpu", "late": "reserved_for:starved"},
        (5, 256),
    ),
    "waiting-exactly-the-threshold-is-not-starved": Case(
        [job("head", 4, 1024, waited=120), job("s1")],
        pool(5, 0),
        ["s1"],
        {"head": "insufficient_cpu"},
        (6, 256),
    ),
    "starved-but-larger-than-the-pool-never-reserves": Case(
        [job("huge", 16, 1024, waited=10_000), job("s1")],
        pool(),
        ["s1"],
        {"huge": "insufficient_cpu"},
        (1, 256),
    ),
    "starved-memory-head-reserves": Case(
        [job("head", 1, 4096, waited=200), job("s1")],
        pool(0, 1),
        [],
        {"head": "insufficient_memory", "s1": "reserved_for:head"},
        (0, 1),
    ),
    "paused-pool-starts-nothing": Case(
        [job("a"), job("b", waited=1_000)],
        pool(2, 512, paused=True),
        [],
        {"a": "paused", "b": "paused"},
        (2, 512),
    ),
    "over-used-pool-starts-nothing": Case(
        [job("a")], pool(9, 0), [], {"a": "insufficient_cpu"}, (9, 0)
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide_admission(case: Case) -> None:
    decision = decide_admission(case.candidates, case.pool, T0, POLICY)

    assert [c.job_id for c in decision.started] == case.started
    assert dict(decision.waiting) == case.waiting
    assert (decision.cpu_used, decision.memory_used) == case.used
    # Every candidate is accounted for exactly once, and the pool is never over capacity
    # because of what started.
    assert set(case.started).isdisjoint(case.waiting)
    assert len(case.started) + len(case.waiting) == len(case.candidates)


def test_scenario_4_ranks_high_before_normal_then_submission_order() -> None:
    assert [c.job_id for c in SCENARIO_4] == [
        "heavy_0", "heavy_1", "heavy_2", "heavy_3", "heavy_4",
        "light_0", "light_1", "light_2", "light_3", "light_4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("older", "newer", "older_ranks_first"),
    [
        # Critical is 3 levels above low: 3 * 60 s = 180 s of credit.
        pytest.param(
            (Priority.LOW, 200), (Priority.CRITICAL, 0), True, id="aged-low-beats-new-critical"
        ),
        pytest.param((Priority.LOW, 170), (Priority.CRITICAL, 0), False, id="not-aged-enough"),
        pytest.param((Priority.NORMAL, 61), (Priority.HIGH, 0), True, id="one-level-61s"),
        pytest.param(
            (Priority.HIGH, 0), (Priority.NORMAL, 0), True, id="same-instant-priority-wins"
        ),
        pytest.param(
            (Priority.NORMAL, 10), (Priority.NORMAL, 0), True, id="same-priority-older-first"
        ),
    ],
)
def test_admission_rank(
    older: tuple[Priority, float], newer: tuple[Priority, float], older_ranks_first: bool
) -> None:
    older_rank = admission_rank(older[0], T0 - timedelta(seconds=older[1]), POLICY)
    newer_rank = admission_rank(newer[0], T0 - timedelta(seconds=newer[1]), POLICY)
    assert (older_rank < newer_rank) is older_ranks_first


def test_admission_rank_value() -> None:
    assert admission_rank(Priority.CRITICAL, T0, POLICY) == T0.timestamp() - 180.0
    assert admission_rank(Priority.LOW, T0, POLICY) == T0.timestamp()


def test_aged_low_job_is_admitted_before_a_new_critical_one() -> None:
    low = job("old_low", priority=Priority.LOW, waited=200)
    critical = job("new_critical", priority=Priority.CRITICAL)

    decision = decide_admission(ranked([critical, low]), pool(7), T0, POLICY)

    assert [c.job_id for c in decision.started] == ["old_low"]
    assert dict(decision.waiting) == {"new_critical": "insufficient_cpu"}


def test_policy_from_settings() -> None:
    settings = Settings(aging_seconds_per_level=30, starvation_seconds=90)
    assert AdmissionPolicy.from_settings(settings) == AdmissionPolicy(30.0, 90.0)


def test_pool_free_tokens() -> None:
    state = pool(3, 1000)
    assert (state.cpu_free, state.memory_free) == (5, 3096)
