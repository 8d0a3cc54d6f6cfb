"""Every waiting job says why it waits: `waiting_reason` on GET /jobs/{id} for the reasons
admission gives (paused, insufficient_cpu, insufficient_memory, reserved_for:<id>,
no_worker), each checked against what then actually happens to the job."""

from __future__ import annotations

import time
from typing import Any

from tests.support.product import Product, wait_until

LONG = {"type": "long_running", "payload": {"duration_seconds": 30}}
SHORT = {"type": "quick_task", "payload": {"duration_seconds": 0.2}}


def job_with(job_id: str, cpu: int, memory: int, kind: dict[str, Any] = SHORT) -> dict[str, Any]:
    return {
        **kind,
        "job_id": job_id,
        "resource_requirements": {"cpu_units": cpu, "memory_mb": memory},
    }


def waiting(product: Product, job_id: str) -> tuple[str, str | None, str | None]:
    job = product.job(job_id)
    return job["status"], job["queued_at"], job["waiting_reason"]


def test_paused_scheduler(product: Product) -> None:
    # Given a paused scheduler
    product.http.post("/scheduler/pause")

    # When a job that fits in the idle pool is submitted
    product.submit(job_with("while_paused", 1, 128))

    # Then it waits because of the pause, holding no tokens
    assert waiting(product, "while_paused") == ("pending", None, "paused")
    assert product.http.get("/stats").json()["tokens"]["cpu_units"]["used"] == 0
    # and runs once the scheduler resumes
    product.http.post("/scheduler/resume")
    assert product.wait_for_status("while_paused", "completed")["waiting_reason"] is None


def test_insufficient_cpu_and_insufficient_memory(product: Product) -> None:
    # Given a running job holding half the CPU units and all of the memory
    product.submit(job_with("blocker", 4, 4096, LONG))
    product.wait_for_status("blocker", "running")

    # When a job needing more CPU than is free, then a small one, are submitted
    product.submit(job_with("wants_cpu", 5, 1))
    product.submit(job_with("wants_memory", 1, 1))

    # Then the first waits for CPU (checked first) and the second, which has CPU, for memory
    assert waiting(product, "wants_cpu") == ("pending", None, "insufficient_cpu")
    assert waiting(product, "wants_memory") == ("pending", None, "insufficient_memory")
    tokens = product.http.get("/stats").json()["tokens"]
    assert (tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]) == (4, 4096)

    # When the blocker is cancelled, both fit together and run
    assert product.http.patch("/jobs/blocker/cancel").status_code in (200, 202)
    jobs = product.wait_all_terminal(["blocker", "wants_cpu", "wants_memory"])
    assert [jobs[i]["status"] for i in ("blocker", "wants_cpu", "wants_memory")] == [
        "cancelled",
        "completed",
        "completed",
    ]


def test_reserved_for_a_starved_job(start_product) -> None:  # type: ignore[no-untyped-def]
    # Given a product where a job waiting over 1 s counts as starved, and a running job
    # holding half the CPU units
    product: Product = start_product(workers=1, TASKQ_STARVATION_SECONDS="1")
    product.submit(job_with("blocker", 4, 512, LONG))
    product.wait_for_status("blocker", "running")
    # and a job needing the whole pool, waiting past the threshold
    product.submit(job_with("whole_pool", 8, 1024))
    assert waiting(product, "whole_pool") == ("pending", None, "insufficient_cpu")
    time.sleep(1.3)  # deliberately let the starvation threshold pass

    # When a small job that fits in the free half of the pool is submitted
    product.submit(job_with("small", 1, 128))

    # Then it does not backfill: the free tokens are held for the starved job
    assert waiting(product, "small") == ("pending", None, "reserved_for:whole_pool")
    time.sleep(0.6)  # several maintenance passes (every 0.2 s) admit nothing either
    assert waiting(product, "small") == ("pending", None, "reserved_for:whole_pool")
    assert waiting(product, "whole_pool") == ("pending", None, "insufficient_cpu")

    # When the blocker goes, the starved job runs first, then the small one
    product.http.patch("/jobs/blocker/cancel")
    jobs = product.wait_all_terminal(["blocker", "whole_pool", "small"])
    assert jobs["whole_pool"]["status"] == jobs["small"]["status"] == "completed"
    assert jobs["whole_pool"]["finished_at"] <= jobs["small"]["started_at"]


def test_no_worker(start_product) -> None:  # type: ignore[no-untyped-def]
    # Given an api and no worker process at all
    product: Product = start_product(workers=0)

    # When a job that fits is submitted, and one that does not fit beside it
    product.submit(job_with("admitted", 6, 1024))
    product.submit(job_with("too_big_now", 4, 1024))

    # Then the first holds its tokens and waits for a worker (the api admits after it
    # answers: wait for that); the second waits for CPU
    wait_until(lambda: waiting(product, "admitted")[1] is not None, 10, 0.05, "admission")
    status, queued_at, reason = waiting(product, "admitted")
    assert (status, reason) == ("pending", "no_worker") and queued_at is not None
    assert waiting(product, "too_big_now") == ("pending", None, "insufficient_cpu")
    assert product.http.get("/stats").json()["tokens"]["cpu_units"]["used"] == 6

    # When a worker starts, both run, one after the other
    product.start_worker()
    jobs = product.wait_all_terminal(["admitted", "too_big_now"])
    assert {job["status"] for job in jobs.values()} == {"completed"}
    assert jobs["admitted"]["finished_at"] <= jobs["too_big_now"]["started_at"]
