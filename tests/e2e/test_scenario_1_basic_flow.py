"""Scenario 1 (shared/scenarios/1_basic_job_flow.json) end to end: real api, RabbitMQ,
PostgreSQL and a worker process."""

from __future__ import annotations

from tests.support.product import Product
from tests.support.scenarios import load_scenario

SCENARIO = load_scenario("1_basic_job_flow")


def test_all_jobs_complete_critical_first_with_timestamps_and_logs(
    start_product,  # type: ignore[no-untyped-def]
) -> None:
    # Given a running product with one worker thread (so runs are strictly sequential),
    # paused so that all three jobs are ready at once
    product: Product = start_product(workers=1, threads=1)
    assert product.http.post("/scheduler/pause").json() == {"paused": True}
    ids = [product.submit(job)["job_id"] for job in SCENARIO["jobs"]]
    normal_email, critical_email, low_report = ids

    # When the scheduler resumes
    product.http.post("/scheduler/resume")
    jobs = product.wait_all_terminal(ids, timeout=30)

    # Then every job completed, the critical one first, the others in priority order
    assert {j["status"] for j in jobs.values()} == {"completed"}
    started = sorted(ids, key=lambda i: jobs[i]["started_at"])
    assert started == [critical_email, normal_email, low_report]
    finished = sorted(ids, key=lambda i: jobs[i]["finished_at"])
    assert finished == [critical_email, normal_email, low_report]
    # and resources were tracked: requirements shown, all tokens returned
    assert jobs[low_report]["resource_requirements"] == {"cpu_units": 4, "memory_mb": 2048}
    stats = product.http.get("/stats").json()
    assert stats["tokens"]["cpu_units"]["used"] == 0
    assert stats["tokens"]["memory_mb"]["used"] == 0
    for job in jobs.values():
        assert job["created_at"] <= job["queued_at"] <= job["started_at"] <= job["finished_at"]
        assert job["attempts"] == 1
        # and the logs show every transition
        logs = product.http.get(f"/jobs/{job['job_id']}/logs").json()["items"]
        transitions = [
            (e["data"].get("previous_status"), e["data"].get("status"))
            for e in logs
            if e["event"] == f"job_{e['data'].get('status')}"  # transitions only
        ]
        assert transitions == [(None, "pending"), ("pending", "running"), ("running", "completed")]
        assert [e["event"] for e in logs if e["event"].startswith("tokens_")] == [
            "tokens_granted",
            "tokens_released",
        ]
