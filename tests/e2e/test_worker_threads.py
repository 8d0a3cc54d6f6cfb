"""Each worker process reports its threads and how many run a job's handler (migration
0018): with claim on delivery, `running` also counts attempts that wait in their process
for a thread, and operators see the two apart in GET /workers, /stats/overview and
/metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.support.product import Product, wait_until

ProductFactory = Callable[..., Product]


def test_busy_threads_are_told_apart_from_claimed_attempts(
    start_product: ProductFactory,
) -> None:
    # Given one worker process of 2 threads, heartbeating every 0.3 s
    product = start_product(workers=0, TASKQ_WORKER_HEARTBEAT_SECONDS="0.3")
    product.start_worker(processes=1, threads=2)

    def worker() -> dict[str, Any] | None:
        items = product.http.get("/workers").json()["items"]
        return items[0] if len(items) == 1 else None

    idle = wait_until(worker, 10, 0.1, "a live worker")
    assert (idle["threads"], idle["busy_threads"]) == (2, 0)

    # When three jobs of 3 s each are admitted at once (the pool has room for all three)
    jobs = [
        product.submit({"type": "noop", "payload": {"duration_seconds": 3}})["job_id"]
        for _ in range(3)
    ]

    # Then the process claims all three (one waits for a thread) and reports 2 busy threads
    busy = wait_until(
        lambda: (
            (w := worker()) is not None
            and w["running_attempts"] == 3
            and w["busy_threads"] == 2
            and w
        ),
        10,
        0.1,
        "three claimed attempts on two busy threads",
    )
    assert busy["threads"] == 2
    overview = product.http.get("/stats/overview").json()
    assert overview["worker_threads"] == {"total": 2, "busy": 2}
    assert overview["active_jobs_by_status"]["running"] == 3
    scrape = product.http.get("/metrics").text
    assert 'taskq_worker_threads{state="busy"} 2.0' in scrape
    assert 'taskq_worker_threads{state="total"} 2.0' in scrape

    # and once the jobs are done, no thread is busy
    product.wait_all_terminal(jobs, timeout=30)
    wait_until(
        lambda: (w := worker()) is not None and w["busy_threads"] == 0,
        10,
        0.1,
        "idle threads after the jobs",
    )
