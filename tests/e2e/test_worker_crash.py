"""A worker killed with SIGKILL (SPEC scheduling rules 2 and 6): its tokens come back when
its leases expire, its jobs run again under their retry rules, and the message RabbitMQ
redelivers for the lost attempt is skipped, so no attempt runs twice.

A running attempt's lease expires TASKQ_LEASE_TTL_SECONDS (3 s in the test settings) after
its worker process's last heartbeat, whatever the job's timeout; the maintenance ticker of
any live worker then reclaims it.
"""

from __future__ import annotations

import json
import signal
from datetime import datetime
from typing import Any

from tests.support.product import Process, Product, wait_until

TIMEOUT_SECONDS = 30.0  # far longer than the lease: the lease, not the timeout, decides
LEASE_SECONDS = 3.0  # TASKQ_LEASE_TTL_SECONDS in FAST_ENV
MARGIN_SECONDS = 4.0  # a maintenance tick, the second worker's boot, a loaded machine

# Runs 2 s, within its timeout: attempt 2 completes once attempt 1 is counted as lost.
RETRIED = {
    "job_id": "crash_retried",
    "type": "long_running",
    "payload": {"duration_seconds": 2.0},
    "resource_requirements": {"cpu_units": 2, "memory_mb": 512},
    "timeout_seconds": TIMEOUT_SECONDS,
    "retry_config": {
        "max_attempts": 2,
        "backoff_multiplier": 1,
        "initial_delay_seconds": 1.0,
        "max_delay_seconds": 1.0,
    },
}
# No attempt left after the lost one: it fails and is dead-lettered as worker_lost.
FINAL = {
    **RETRIED,
    "job_id": "crash_final",
    "retry_config": {**RETRIED["retry_config"], "max_attempts": 1},  # type: ignore[dict-item]
}


def tokens_used(product: Product) -> tuple[int, int]:
    tokens = product.http.get("/stats").json()["tokens"]
    return tokens["cpu_units"]["used"], tokens["memory_mb"]["used"]


def logs(product: Product, job_id: str) -> list[dict[str, Any]]:
    return list(product.http.get(f"/jobs/{job_id}/logs").json()["items"])


def skipped_messages(worker: Process) -> set[tuple[str, int, str]]:
    """(job_id, attempt, reason) of every job message the worker skipped, from its JSON log."""
    skipped = set()
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if '"message_skipped"' not in line:
            continue
        entry = json.loads(line)
        skipped.add((entry["job_id"], entry["attempt"], entry["reason"]))
    return skipped


def test_killed_worker_tokens_return_and_its_jobs_run_again(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given one worker process running two jobs that hold 4 CPU units and 1024 MB together
    product: Product = start_product(workers=1)
    (doomed,) = [p for p in product.processes if p.name.startswith("worker")]
    for body in (RETRIED, FINAL):
        product.submit(body)
    for job_id in ("crash_retried", "crash_final"):
        product.wait_for_status(job_id, "running", timeout=15)
    assert tokens_used(product) == (4, 1024)

    # When the worker is killed with SIGKILL (its whole process group, mid-attempt)
    doomed.stop(signal.SIGKILL)
    assert doomed.popen.returncode == -signal.SIGKILL
    # Then its tokens stay held: nobody knows yet that it died
    assert tokens_used(product) == (4, 1024)

    # When a second worker starts (its maintenance ticker reclaims expired leases)
    survivor = product.start_worker()

    # Then the tokens return once the leases expire, before the retry takes them again
    wait_until(
        lambda: tokens_used(product) == (0, 0),
        LEASE_SECONDS + MARGIN_SECONDS,
        message="the dead worker's tokens to return",
    )
    for job_id in ("crash_retried", "crash_final"):
        attempt_1 = logs(product, job_id)
        started = next(e["at"] for e in attempt_1 if e["event"] == "job_running")
        released = next(e["at"] for e in attempt_1 if e["event"] == "tokens_released")
        held = (datetime.fromisoformat(released) - datetime.fromisoformat(started)).total_seconds()
        assert LEASE_SECONDS <= held <= LEASE_SECONDS + MARGIN_SECONDS, (job_id, held)

    # and the job with an attempt left runs it and completes on attempt 2
    retried = product.wait_for_status("crash_retried", {"completed", "failed"}, timeout=30)
    assert (retried["status"], retried["attempts"]) == ("completed", 2)
    retried_logs = logs(product, "crash_retried")
    assert [e["attempt"] for e in retried_logs if e["event"] == "job_running"] == [1, 2]
    lost = [e for e in retried_logs if e["event"] == "job_retrying"]
    assert len(lost) == 1 and lost[0]["attempt"] == 1
    assert "worker lost" in lost[0]["message"]
    assert lost[0]["data"]["result"] == "worker_lost"

    # and the job without one fails for good, dead-lettered as worker_lost
    final = product.wait_for_status("crash_final", {"failed"}, timeout=15)
    assert final["attempts"] == 1
    assert "worker lost" in final["last_error"]
    final_logs = logs(product, "crash_final")
    assert [e["attempt"] for e in final_logs if e["event"] == "job_running"] == [1]
    letters = product.http.get("/dead-letters").json()["items"]
    assert [(d["job_id"], d["reason"]) for d in letters] == [("crash_final", "worker_lost")]

    # and RabbitMQ's redelivery of the killed worker's messages ran nothing: skipped
    redelivered = {("crash_retried", 1), ("crash_final", 1)}
    wait_until(
        lambda: redelivered <= {(j, a) for j, a, _ in skipped_messages(survivor)},
        10,
        message="the redelivered messages to be skipped",
    )
    # and every token is back, no lease left behind
    assert tokens_used(product) == (0, 0)
    stats = product.http.get("/stats").json()
    assert stats["jobs_by_status"]["running"] == 0
    assert stats["jobs_by_status"]["pending"] == 0
