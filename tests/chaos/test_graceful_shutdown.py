"""SIGTERM to a worker with jobs running (what `docker stop` or a deploy does).

The worker stops taking messages and lets its running attempts finish; none of them is
counted as a failure, nothing runs twice, and its prefetched messages run elsewhere.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
import sqlalchemy as sa

from tests.chaos.conftest import StartProduct
from tests.support.chaos import (
    PoolSampler,
    check_invariants,
    leases_of_worker,
    print_figures,
    random_dag,
    wait_all_completed,
)
from tests.support.product import wait_until

pytestmark = pytest.mark.chaos

JOBS = 60
DURATION_SECONDS = 2.0


def test_sigterm_to_a_worker_with_jobs_running(
    start_supervised: StartProduct, chaos_engine: sa.Engine
) -> None:
    # Given two supervised worker processes running 2-second jobs that allow one attempt
    product = start_supervised(workers=2)
    bodies = random_dag(
        "term", JOBS, seed=21, duration=(DURATION_SECONDS, DURATION_SECONDS), max_attempts=1
    )
    for body in bodies:
        body["depends_on"] = []
        body["timeout_seconds"] = 10
    started = time.monotonic()
    with PoolSampler(chaos_engine.url.render_as_string(hide_password=False)) as sampler:
        product.submit_batch(bodies)

        def busy_worker() -> tuple[psutil.Process, int] | None:
            for process in product.worker_processes():
                held = len(leases_of_worker(chaos_engine, process.pid))
                if held >= 3:
                    return process, held
            return None

        worker, running = wait_until(busy_worker, 30, 0.05, "a worker running 3 jobs")
        master = worker.parent()
        assert master is not None

        # When its dramatiq master gets SIGTERM (it passes it on to the worker process)
        term_at = time.monotonic()
        os.kill(master.pid, signal.SIGTERM)
        worker.wait(DURATION_SECONDS + 20)
        stopped_s = time.monotonic() - term_at

        # Then the api keeps answering, and every job completes on its one attempt
        assert product.http.get("/healthz").status_code == 200
        wait_all_completed(chaos_engine, "term", JOBS, timeout=120)
    figures = check_invariants(chaos_engine, "term", JOBS)
    assert not sampler.violations, f"capacity exceeded: {sampler.violations[:5]}"
    probe = product.probe_job_completes("term_probe")
    print_figures(
        "sigterm with jobs running",
        {
            **figures,
            "running_on_stopped_worker": running,
            "worker_stopped_after_s": stopped_s,
            "run_s": time.monotonic() - started,
            "pool_samples": sampler.samples,
            "probe_job_s": probe,
        },
    )
