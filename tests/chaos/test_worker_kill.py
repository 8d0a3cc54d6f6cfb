"""SIGKILL of worker processes (what the OOM killer does) while the product runs a DAG.

The product runs as scripts/run.sh runs it: each worker process under its own restart loop.
A killed worker process is replaced within seconds; the api, the scheduler and the other
worker keep running; the killed attempts' jobs run again and every job completes once.
"""

from __future__ import annotations

import time
from functools import partial

import psutil
import pytest
import sqlalchemy as sa

from tests.chaos.conftest import StartProduct
from tests.support.chaos import (
    PoolSampler,
    Supervised,
    check_invariants,
    db_now,
    leases_of_worker,
    print_figures,
    random_dag,
    running_again_at,
    wait_all_completed,
    wait_progress,
)
from tests.support.product import wait_until

pytestmark = pytest.mark.chaos

JOBS = 1000
KILLS_AT = (0.15, 0.4, 0.65)  # fractions of the DAG completed
JOB_TIMEOUT_SECONDS = 3.0
REPLACED_WITHIN_SECONDS = 20.0  # boot of a worker process on a loaded 2-core machine


def kill_busiest_worker(
    product: Supervised, engine: sa.Engine
) -> tuple[int, list[tuple[str, int]]]:
    """SIGKILL the worker process holding the most running attempts; (pid, its attempts)."""

    def busiest() -> tuple[int, list[tuple[str, int]]] | None:
        held = [(p.pid, leases_of_worker(engine, p.pid)) for p in product.worker_processes()]
        held = [h for h in held if h[1]]
        return max(held, key=lambda h: len(h[1])) if held else None

    pid, _ = wait_until(busiest, 20, 0.05, "a worker process running jobs")
    try:
        victim = psutil.Process(pid)
        victim.kill()  # SIGKILL
        victim.wait(5)
    except psutil.NoSuchProcess:
        pass  # gone already (its master reaped it first): dead either way
    # Read after the kill: the leases a dead process can no longer release.
    return pid, leases_of_worker(engine, pid)


def worker_replaced(product: Supervised, ready_before: int) -> bool:
    """A new worker process booted, and the product has its two again."""
    return product.ready_workers() > ready_before and len(product.worker_processes()) == 2


def test_three_worker_kills_during_a_1000_job_dag(
    start_supervised: StartProduct, chaos_engine: sa.Engine
) -> None:
    # Given the supervised product (2 worker processes) running a 1,000-job DAG
    product = start_supervised(workers=2)
    bodies = random_dag("kill", JOBS, seed=9, timeout_seconds=JOB_TIMEOUT_SECONDS)
    started = time.monotonic()
    with PoolSampler(str(chaos_engine.url.render_as_string(hide_password=False))) as sampler:
        product.submit_batch(bodies)

        # When a worker process is SIGKILLed three times during the run
        replaced: list[float] = []
        recovered: list[float] = []
        lost_attempts = 0
        for fraction in KILLS_AT:
            wait_progress(chaos_engine, "kill", fraction, timeout=120)
            ready_before = product.ready_workers()
            killed_at, killed_db_at = time.monotonic(), db_now(chaos_engine)
            _, lost = kill_busiest_worker(product, chaos_engine)
            lost_attempts += len(lost)

            # Then the api keeps answering, and the killed process is replaced within seconds
            assert product.http.get("/healthz").status_code == 200
            wait_until(
                partial(worker_replaced, product, ready_before),
                REPLACED_WITHIN_SECONDS,
                0.1,
                "the killed worker process to be replaced",
            )
            replaced.append(time.monotonic() - killed_at)
            # and the killed attempts' jobs run again elsewhere
            if lost:
                again = wait_until(
                    partial(running_again_at, chaos_engine, lost),
                    60,
                    0.2,
                    "the killed worker's jobs to run again",
                )
                recovered.append((again - killed_db_at).total_seconds())

        # and every job completes, each attempt once
        wait_all_completed(chaos_engine, "kill", JOBS, timeout=180)
    elapsed = time.monotonic() - started
    figures = check_invariants(chaos_engine, "kill", JOBS, lost_attempts_allowed=True)
    assert not sampler.violations, f"capacity exceeded: {sampler.violations[:5]}"
    probe = product.probe_job_completes("kill_probe")
    print_figures(
        "sigkill x3 during 1000-job DAG",
        {
            **figures,
            "faults": len(KILLS_AT),
            "attempts_on_killed_workers": lost_attempts,
            "replaced_within_s": max(replaced),
            "killed_jobs_running_again_within_s": max(recovered) if recovered else 0.0,
            "run_s": elapsed,
            "pool_samples": sampler.samples,
            "max_cpu_used": sampler.max_cpu_used,
            "probe_job_s": probe,
        },
    )


def test_a_killed_workers_jobs_come_back_within_seconds_whatever_their_timeout(
    start_supervised: StartProduct, chaos_engine: sa.Engine
) -> None:
    # Given jobs with the default 300 s timeout running on the supervised product
    product = start_supervised(workers=2)
    bodies = random_dag("lease", 8, seed=1, duration=(2.0, 2.0), timeout_seconds=300)
    for body in bodies:
        body["depends_on"] = []
    product.submit_batch(bodies)

    # When the worker process running most of them is SIGKILLed
    killed_at = db_now(chaos_engine)
    _, lost = kill_busiest_worker(product, chaos_engine)
    assert lost

    # Then within seconds (not 300) they run again elsewhere
    again = wait_until(
        lambda: running_again_at(chaos_engine, lost), 20, 0.2, "the killed jobs to run again"
    )
    print_figures(
        "sigkill, 300 s timeout",
        {"killed_attempts": len(lost), "running_again_s": (again - killed_at).total_seconds()},
    )
    wait_all_completed(chaos_engine, "lease", len(bodies), timeout=30)
    check_invariants(chaos_engine, "lease", len(bodies), lost_attempts_allowed=True)
