"""Idempotent submission: a repeated POST /jobs returns the original job (200) and the job
runs once; the same id or key with a different body is a conflict (409)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import sqlalchemy as sa

from tests.support.product import Product

BODY: dict[str, Any] = {
    "type": "send_email",
    "priority": "high",
    "payload": {"to": "treasury@example.com", "duration_seconds": 0.2},
}
CONCURRENT_SUBMISSIONS = 20


def post_all_at_once(
    product: Product, body: dict[str, Any], headers: dict[str, str], count: int
) -> list[httpx.Response]:
    """`count` identical POST /jobs, each on its own connection, released together."""
    barrier = threading.Barrier(count)
    responses: list[httpx.Response | None] = [None] * count
    errors: list[BaseException] = []

    def post(index: int) -> None:
        try:
            with product.client_with("submit") as client:
                barrier.wait(timeout=30)
                responses[index] = client.post("/jobs", json=body, headers=headers)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert all(r is not None for r in responses)
    return [r for r in responses if r is not None]


def events_of(engine: sa.Engine, job_id: str, event: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM job_events WHERE job_id = :id AND event = :event"),
                {"id": job_id, "event": event},
            ).scalar_one()
        )


def test_concurrent_submissions_with_one_key_make_one_job_run_once(
    product: Product, engine: sa.Engine
) -> None:
    # Given twenty clients sending the same job with the same Idempotency-Key at once
    responses = post_all_at_once(
        product, BODY, {"Idempotency-Key": "payout-2024-06-01-0042"}, CONCURRENT_SUBMISSIONS
    )

    # Then exactly one created it and the others got the original
    assert Counter(r.status_code for r in responses) == {201: 1, 200: CONCURRENT_SUBMISSIONS - 1}
    job_ids = {r.json()["job_id"] for r in responses}
    assert len(job_ids) == 1
    (job_id,) = job_ids
    assert {r.headers["location"] for r in responses} == {f"/jobs/{job_id}"}
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT id FROM jobs WHERE idempotency_key = :key"),
            {"key": "payout-2024-06-01-0042"},
        ).all()
        assert [r.id for r in stored] == [job_id]
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 1

    # and the job runs once
    job = product.wait_for_status(job_id, "completed")
    assert job["attempts"] == 1
    assert job["idempotency_key"] == "payout-2024-06-01-0042"
    assert events_of(engine, job_id, "job_running") == 1
    assert events_of(engine, job_id, "tokens_granted") == 1


def test_same_job_id_same_body_is_the_original_and_different_body_conflicts(
    product: Product, engine: sa.Engine
) -> None:
    # Given a job submitted with a client-chosen id
    body = {**BODY, "job_id": "settlement_batch_17"}
    first = product.http.post("/jobs", json=body)
    assert first.status_code == 201, first.text
    product.wait_for_status("settlement_batch_17", "completed")

    # When the same body is sent again
    again = product.http.post("/jobs", json=body)

    # Then it is the original job, which does not run again
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "status": "completed", "position_in_queue": None}
    assert again.headers["location"] == "/jobs/settlement_batch_17"

    # When a different body is sent under the same id
    changed = product.http.post("/jobs", json={**body, "priority": "low"})

    # Then it is a conflict naming the job, and the original is unchanged
    assert changed.status_code == 409, changed.text
    error = changed.json()["error"]
    assert error["code"] == "idempotency_conflict"
    assert error["details"] == {"job_id": "settlement_batch_17"}
    job = product.job("settlement_batch_17")
    assert (job["priority"], job["attempts"]) == ("high", 1)
    assert events_of(engine, "settlement_batch_17", "job_running") == 1


def test_key_in_body_and_in_header_are_the_same_key(product: Product) -> None:
    # Given a job submitted with the key in its body
    first = product.http.post("/jobs", json={**BODY, "idempotency_key": "refund-981"})
    assert first.status_code == 201, first.text
    job_id = first.json()["job_id"]

    # When the same job is sent with the key as a header instead
    by_header = product.http.post("/jobs", json=BODY, headers={"Idempotency-Key": "refund-981"})

    # Then it is the original
    assert by_header.status_code == 200, by_header.text
    assert by_header.json()["job_id"] == job_id

    # And the other way round: header first, then body
    second = product.http.post("/jobs", json=BODY, headers={"Idempotency-Key": "refund-982"})
    assert second.status_code == 201, second.text
    by_body = product.http.post("/jobs", json={**BODY, "idempotency_key": "refund-982"})
    assert by_body.status_code == 200, by_body.text
    assert by_body.json()["job_id"] == second.json()["job_id"] != job_id

    # And a different body under either form of the key conflicts
    other = {**BODY, "payload": {"to": "someone-else@example.com"}}
    for kwargs in (
        {"json": {**other, "idempotency_key": "refund-981"}},
        {"json": other, "headers": {"Idempotency-Key": "refund-981"}},
    ):
        response = product.http.post("/jobs", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "idempotency_conflict"
    for job in (job_id, second.json()["job_id"]):
        product.wait_for_status(job, "completed")
