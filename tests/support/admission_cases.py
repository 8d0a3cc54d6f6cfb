"""Hypothesis strategies for admission: ready candidates (best ranked first) and a pool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from queue_service.admission import AdmissionPolicy, Candidate, PoolState
from queue_service.model import Priority

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
POLICY = AdmissionPolicy(aging_seconds_per_level=60.0, starvation_seconds=120.0)


@st.composite
def pools(draw: st.DrawFn) -> PoolState:
    cpu_capacity = draw(st.integers(1, 16))
    memory_capacity = draw(st.integers(1, 4096))
    return PoolState(
        cpu_capacity=cpu_capacity,
        memory_capacity=memory_capacity,
        cpu_used=draw(st.integers(0, cpu_capacity)),
        memory_used=draw(st.integers(0, memory_capacity)),
        paused=draw(st.sampled_from([False, False, False, True])),
    )


@st.composite
def candidate_lists(draw: st.DrawFn, max_size: int = 16) -> list[Candidate]:
    """Up to `max_size` ready jobs in rank order, some of them waiting past starvation."""
    count = draw(st.integers(0, max_size))
    return [
        Candidate(
            job_id=f"job_{index:02d}",
            priority=draw(st.sampled_from(list(Priority))),
            cpu_units=draw(st.integers(1, 20)),
            memory_mb=draw(st.integers(1, 5000)),
            pending_since=NOW - timedelta(seconds=draw(st.sampled_from([0, 30, 119, 121, 600]))),
        )
        for index in range(count)
    ]
