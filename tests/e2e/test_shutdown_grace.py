"""SIGTERM to a worker: running attempts get a grace period, then are given back.

The attempt still running when the grace (TASKQ_SHUTDOWN_GRACE_SECONDS) ends is not
counted as a failure: the job is retried at once with one more attempt in its budget, and
its tokens come back without waiting for the lease to expire.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from tests.support.product import Product, wait_until

SLOW = {
    "job_id": "slow_on_shutdown",
    "type": "long_running",
    "payload": {"duration_seconds": 8.0},
    "retry_config": {"max_attempts": 1},
    "timeout_seconds": 60,
}
QUICK = {"job_id": "quick_on_shutdown", "type": "noop", "payload": {"duration_seconds": 0.5}}


def _logs(product: Product, job_id: str) -> list[dict[str, Any]]:
    return list(product.http.get(f"/jobs/{job_id}/logs").json()["items"])


def test_sigterm_gives_back_what_did_not_finish_within_the_grace(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given one worker (grace 1 s) running a job of 8 s on its only attempt, and a quick one
    product: Product = start_product(workers=1, TASKQ_SHUTDOWN_GRACE_SECONDS="1")
    (worker,) = [p for p in product.processes if p.name.startswith("worker")]
    product.submit(SLOW)
    product.wait_for_status("slow_on_shutdown", "running", timeout=15)
    product.submit(QUICK)
    product.wait_for_status("quick_on_shutdown", "running", timeout=15)

    # When the worker gets SIGTERM
    stopped_at = time.monotonic()
    worker.stop(signal.SIGTERM, timeout=30)

    # Then it stopped soon after its grace, the quick job finished within it,
    assert time.monotonic() - stopped_at < 15
    assert product.job("quick_on_shutdown")["status"] == "completed"
    # and the slow job was given back: retrying (not failed), its tokens returned at once
    slow = product.job("slow_on_shutdown")
    assert slow["status"] in ("retrying", "pending"), slow
    assert slow["max_attempts"] == 2 and slow["attempts"] == 1
    tokens = product.http.get("/stats").json()["tokens"]
    assert tokens["cpu_units"]["used"] in (0, 1)  # 1 once re-admitted, waiting for a worker
    given_back = [e for e in _logs(product, "slow_on_shutdown") if e["event"] == "job_retrying"]
    assert [e["data"]["result"] for e in given_back] == ["interrupted"]

    # When a worker is back, Then the job completes on its second attempt
    product.start_worker()
    done = product.wait_for_status("slow_on_shutdown", {"completed", "failed"}, timeout=40)
    assert (done["status"], done["attempts"]) == ("completed", 2)
    wait_until(
        lambda: product.http.get("/stats").json()["tokens"]["cpu_units"]["used"] == 0,
        10,
        message="every token back",
    )
