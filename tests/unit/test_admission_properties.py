"""Properties every admission decision keeps, for any ready jobs and any pool state.

Table-driven cases (test_admission.py) show the rules; these check the invariants over
thousands of generated cases: never more than the free tokens in either dimension, the
best-ranked job that fits goes first, a reserved job is never passed, and every job is
either started or told why it waits.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from queue_service.admission import Candidate, PoolState, decide_admission
from queue_service.model import Priority
from tests.support.admission_cases import NOW, POLICY, candidate_lists, pools


def _starved(candidate: Candidate) -> bool:
    return (NOW - candidate.pending_since).total_seconds() > POLICY.starvation_seconds


@given(candidate_lists(), pools())
def test_started_jobs_never_exceed_the_free_tokens(
    candidates: list[Candidate], pool: PoolState
) -> None:
    decision = decide_admission(candidates, pool, NOW, POLICY)
    assert sum(c.cpu_units for c in decision.started) <= pool.cpu_free
    assert sum(c.memory_mb for c in decision.started) <= pool.memory_free
    assert decision.cpu_used == pool.cpu_used + sum(c.cpu_units for c in decision.started)
    assert decision.memory_used == pool.memory_used + sum(c.memory_mb for c in decision.started)
    assert decision.cpu_used <= pool.cpu_capacity
    assert decision.memory_used <= pool.memory_capacity


@given(candidate_lists(), pools())
def test_every_job_starts_or_says_why_it_waits(
    candidates: list[Candidate], pool: PoolState
) -> None:
    decision = decide_admission(candidates, pool, NOW, POLICY)
    started = {c.job_id for c in decision.started}
    assert started.isdisjoint(decision.waiting)
    assert started | set(decision.waiting) == {c.job_id for c in candidates}
    # started jobs keep rank order
    order = [c.job_id for c in candidates]
    assert [c.job_id for c in decision.started] == [i for i in order if i in started]


@given(candidate_lists(), pools())
def test_the_best_ranked_job_that_fits_goes_first(
    candidates: list[Candidate], pool: PoolState
) -> None:
    decision = decide_admission(candidates, pool, NOW, POLICY)
    if pool.paused:
        assert decision.started == ()
        return
    # Walking in rank order with the tokens left, each job that fits starts, until a starved
    # job that does not fit (but could fit an empty pool) reserves the tokens.
    cpu, memory = pool.cpu_free, pool.memory_free
    expected = []
    for candidate in candidates:
        if candidate.cpu_units <= cpu and candidate.memory_mb <= memory:
            expected.append(candidate.job_id)
            cpu -= candidate.cpu_units
            memory -= candidate.memory_mb
        elif (
            _starved(candidate)
            and candidate.cpu_units <= pool.cpu_capacity
            and candidate.memory_mb <= pool.memory_capacity
        ):
            break
    assert [c.job_id for c in decision.started] == expected


@given(candidate_lists(), pools())
def test_a_reserved_job_is_never_passed(candidates: list[Candidate], pool: PoolState) -> None:
    decision = decide_admission(candidates, pool, NOW, POLICY)
    reserved = [
        index
        for index, c in enumerate(candidates)
        if decision.waiting.get(c.job_id, "").startswith(("insufficient_",))
        and _starved(c)
        and c.cpu_units <= pool.cpu_capacity
        and c.memory_mb <= pool.memory_capacity
    ]
    if not reserved:
        return
    behind = {c.job_id for c in candidates[reserved[0] + 1 :]}
    assert behind.isdisjoint(c.job_id for c in decision.started)
    assert all(
        decision.waiting[i] == f"reserved_for:{candidates[reserved[0]].job_id}" for i in behind
    )


@given(st.lists(st.integers(1, 8), min_size=1, max_size=12), st.integers(1, 4096))
def test_memory_of_every_started_job_is_counted(cpu_units: list[int], memory_mb: int) -> None:
    # Given jobs that each fit alone by memory but not all together (CPU is plentiful)
    candidates = [
        Candidate(f"j{i}", Priority.NORMAL, cpu, memory_mb, NOW) for i, cpu in enumerate(cpu_units)
    ]
    decision = decide_admission(candidates, PoolState(128, 4096, 0, 0, False), NOW, POLICY)
    # Then as many start as the memory holds, no more and no fewer
    assert len(decision.started) == min(len(candidates), 4096 // memory_mb)
