"""Scenario 4 (shared/scenarios/4_resource_contention.json) end to end: resource tokens,
priority order and backfill, with two worker processes sharing one pool.

What is checked does not depend on timing. Every grant and release of tokens is a
job_events row written while the pool row is locked, so the event ids give the order in
which the pool changed, one group of rows per transaction. Replaying that log, the test
checks that usage never went past capacity and that every admission step started exactly
the jobs the scheduling rules start (priority, submission order, backfill): the ones
`admission.decide_admission` picks from the jobs still waiting at that moment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

import sqlalchemy as sa

from queue_service.admission import (
    AdmissionPolicy,
    Candidate,
    PoolState,
    admission_rank,
    decide_admission,
)
from queue_service.model import Priority
from queue_service.settings import Settings
from taskq_client.checks import peak_usage
from tests.support.product import Product
from tests.support.scenarios import load_scenario

SCENARIO = load_scenario("4_resource_contention")
CPU_CAPACITY = SCENARIO["capacity"]["cpu_units"]
MEMORY_CAPACITY = SCENARIO["capacity"]["memory_mb"]
HEAVIES = [f"heavy_{i}" for i in range(5)]
LIGHTS = [f"light_{i}" for i in range(5)]


@dataclass(frozen=True)
class AdmissionStep:
    """The token events of one transaction: releases first, then grants."""

    at: datetime
    released: tuple[str, ...]
    granted: tuple[str, ...]


def admission_steps(engine: sa.Engine, job_ids: list[str]) -> list[AdmissionStep]:
    """Token grants and releases in pool order, grouped by transaction (they share `at`)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, job_id, event, at FROM job_events WHERE job_id = ANY(:ids) "
                "AND event IN ('tokens_granted', 'tokens_released') ORDER BY id"
            ),
            {"ids": job_ids},
        ).all()
    steps = []
    for at, group in groupby(rows, key=lambda r: r.at):
        events = list(group)
        kinds = [e.event for e in events]
        # Within a transaction the lease is released before admission grants new ones.
        assert kinds == sorted(kinds, reverse=True), f"grants before releases at {at}: {kinds}"
        steps.append(
            AdmissionStep(
                at=at,
                released=tuple(e.job_id for e in events if e.event == "tokens_released"),
                granted=tuple(e.job_id for e in events if e.event == "tokens_granted"),
            )
        )
    return steps


def submitted_candidates(
    product: Product, jobs: Mapping[str, Mapping[str, Any]]
) -> list[Candidate]:
    """The jobs as admission saw them: pending since their submission (no dependencies)."""
    candidates = []
    for job_id, job in jobs.items():
        logs = product.http.get(f"/jobs/{job_id}/logs").json()["items"]
        became_pending = next(e["at"] for e in logs if e["event"] == "job_pending")
        candidates.append(
            Candidate(
                job_id=job_id,
                priority=Priority(job["priority"]),
                cpu_units=job["resource_requirements"]["cpu_units"],
                memory_mb=job["resource_requirements"]["memory_mb"],
                pending_since=datetime.fromisoformat(became_pending),
            )
        )
    return candidates


def replay_admissions(
    steps: list[AdmissionStep], candidates: list[Candidate], policy: AdmissionPolicy
) -> list[str]:
    """Check every step against the pure decision and capacity; return the grant order.

    `candidates` must be in submission order (the tie-breaker between equal ranks), all of
    them ready before the first step (the scenario is submitted while paused).
    """
    by_id = {c.job_id: c for c in candidates}
    seq = {c.job_id: i for i, c in enumerate(candidates)}
    waiting = dict(by_id)
    cpu_used = memory_used = 0
    granted_order: list[str] = []
    for step in steps:
        for job_id in step.released:
            cpu_used -= by_id[job_id].cpu_units
            memory_used -= by_id[job_id].memory_mb
        ranked = sorted(
            waiting.values(),
            key=lambda c: (admission_rank(c.priority, c.pending_since, policy), seq[c.job_id]),
        )
        pool = PoolState(CPU_CAPACITY, MEMORY_CAPACITY, cpu_used, memory_used, paused=False)
        expected = [c.job_id for c in decide_admission(ranked, pool, step.at, policy).started]
        assert list(step.granted) == expected, (
            f"at {step.at.isoformat()} with {cpu_used} CPU / {memory_used} MB in use and "
            f"{[c.job_id for c in ranked]} waiting, admission granted {list(step.granted)}; "
            f"the scheduling rules start {expected}"
        )
        for job_id in step.granted:
            del waiting[job_id]
            cpu_used += by_id[job_id].cpu_units
            memory_used += by_id[job_id].memory_mb
        assert 0 <= cpu_used <= CPU_CAPACITY, f"{cpu_used} CPU units in use at {step.at}"
        assert 0 <= memory_used <= MEMORY_CAPACITY, f"{memory_used} MB in use at {step.at}"
        granted_order += step.granted
    assert not waiting, f"never admitted: {sorted(waiting)}"
    assert cpu_used == 0 and memory_used == 0, "tokens still held after every job finished"
    return granted_order


def run_paused_then_resume(
    product: Product, bodies: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Submit every job while paused (all ready at once), check they say so, resume."""
    assert product.http.post("/scheduler/pause").json() == {"paused": True}
    ids = [product.submit(body)["job_id"] for body in bodies]
    for job_id in (ids[0], ids[2], ids[-1]):
        job = product.job(job_id)
        assert (job["status"], job["waiting_reason"]) == ("pending", "paused")
    assert product.http.post("/scheduler/resume").json() == {"paused": False}
    return {job_id: product.job(job_id) for job_id in ids}


def test_verbatim_scenario_respects_capacity_and_priority(
    start_product,  # type: ignore[no-untyped-def]
    engine: sa.Engine,
    settings: Settings,
) -> None:
    # Given two worker processes sharing the default pool (8 CPU units, 4096 MB)
    product: Product = start_product(workers=2)
    stats = product.http.get("/stats").json()["tokens"]
    assert (stats["cpu_units"]["capacity"], stats["memory_mb"]["capacity"]) == (
        CPU_CAPACITY,
        MEMORY_CAPACITY,
    )

    # When the ten jobs of the scenario, verbatim, are submitted while paused, then resumed
    run_paused_then_resume(product, SCENARIO["jobs"])
    ids = [job["job_id"] for job in SCENARIO["jobs"]]
    jobs = product.wait_all_terminal(ids, timeout=60)

    # Then every job completed and every token came back
    assert {job["status"] for job in jobs.values()} == {"completed"}
    tokens = product.http.get("/stats").json()["tokens"]
    assert (tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]) == (0, 0)
    # and the running jobs never used more than the pool holds at any instant
    peak_cpu, peak_memory = peak_usage(jobs.values())
    assert peak_cpu <= CPU_CAPACITY and peak_memory <= MEMORY_CAPACITY
    # and every admission step granted what the rules grant, never past capacity
    policy = AdmissionPolicy.from_settings(settings)
    steps = admission_steps(engine, ids)
    order = replay_admissions(steps, submitted_candidates(product, jobs), policy)
    # which here is: the two high-priority heavies together first (8 CPU: nothing else
    # fits beside them), the normal heavies one per freed slot in submission order, and
    # the lights last, four of them alongside the last heavy
    assert steps[0].granted == ("heavy_0", "heavy_1")
    assert order == HEAVIES + LIGHTS
    assert ("light_0", "light_1", "light_2", "light_3") in [s.granted for s in steps]
    # and both high-priority jobs started before any normal one
    high_started = max(jobs[i]["started_at"] for i in ("heavy_0", "heavy_1"))
    normal_started = min(j["started_at"] for j in jobs.values() if j["priority"] == "normal")
    assert datetime.fromisoformat(high_started) < datetime.fromisoformat(normal_started)
    # and both worker processes took part
    workers = {
        e["data"]["worker"]
        for i in ids
        for e in product.http.get(f"/jobs/{i}/logs").json()["items"]
        if e["event"] == "job_running"
    }
    assert len(workers) == 2, workers


def backfill_variant() -> list[dict[str, Any]]:
    """Scenario 4 with 3-CPU heavies, so two of them leave a 2-CPU gap the lights can fill.

    Durations are explicit: the heavies run long enough (1.2 s) for the lights (0.2 s) to
    pass through the gap several times while heavy_2 waits for CPU.
    """
    jobs = copy.deepcopy(SCENARIO["jobs"])
    for job in jobs:
        if job["job_id"].startswith("heavy_"):
            job["resource_requirements"] = {"cpu_units": 3, "memory_mb": 1536}
            job["payload"]["duration_seconds"] = 1.2
        else:
            job["payload"]["duration_seconds"] = 0.2
    return jobs


def test_light_jobs_fill_the_gap_a_waiting_heavy_job_leaves(
    start_product,  # type: ignore[no-untyped-def]
    engine: sa.Engine,
    settings: Settings,
) -> None:
    # Given two worker processes and the scenario's jobs with 3-CPU heavies
    product: Product = start_product(workers=2)
    bodies = backfill_variant()
    ids = [body["job_id"] for body in bodies]

    # When they are submitted while paused and the scheduler resumes
    run_paused_then_resume(product, bodies)

    # Then heavy_2, next in line, waits for CPU: the two high heavies leave only 2 CPU units
    assert product.job("heavy_2")["waiting_reason"] == "insufficient_cpu"
    jobs = product.wait_all_terminal(ids, timeout=60)
    assert {job["status"] for job in jobs.values()} == {"completed"}
    peak_cpu, peak_memory = peak_usage(jobs.values())
    assert peak_cpu <= CPU_CAPACITY and peak_memory <= MEMORY_CAPACITY
    # and the first admission started both high heavies and, in the gap, two lights:
    # they passed heavy_2..heavy_4, which rank ahead of them but do not fit
    steps = admission_steps(engine, ids)
    assert steps[0].granted == ("heavy_0", "heavy_1", "light_0", "light_1")
    # and every later step did the same whenever a light fit and no better job did
    order = replay_admissions(
        steps, submitted_candidates(product, jobs), AdmissionPolicy.from_settings(settings)
    )
    assert order.index("light_1") < order.index("heavy_2")
    assert datetime.fromisoformat(jobs["light_0"]["started_at"]) < datetime.fromisoformat(
        jobs["heavy_2"]["started_at"]
    )
    tokens = product.http.get("/stats").json()["tokens"]
    assert (tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]) == (0, 0)
