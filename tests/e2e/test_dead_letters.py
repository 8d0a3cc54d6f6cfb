"""Dead letters: the named DLX and DLQ as RabbitMQ's management API shows them, and the
/dead-letters routes (list, get, replay, discard)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pika
import pytest
import sqlalchemy as sa

from queue_service import names
from queue_service.settings import Settings
from tests.support.product import Product, wait_until

# A job that fails its only attempt (retryable error, but no attempts left).
FAILS_ONCE: dict[str, Any] = {
    "type": "noop",
    "payload": {"fail_times": 1},
    "retry_config": {"max_attempts": 1},
}


class Management:
    """RabbitMQ's management HTTP API, scoped to the test vhost."""

    def __init__(self, settings: Settings) -> None:
        parameters = pika.URLParameters(settings.broker_url)
        self.vhost = quote(parameters.virtual_host, safe="")
        credentials = parameters.credentials
        self.http = httpx.Client(
            base_url=f"{settings.rabbitmq_management_url}/api",
            auth=(credentials.username, credentials.password),  # type: ignore[attr-defined]
            timeout=10,
        )

    def get(self, path: str) -> Any:
        response = self.http.get(path.format(vhost=self.vhost))
        assert response.status_code == 200, response.text
        return response.json()

    def peek(self, queue: str, count: int) -> list[dict[str, Any]]:
        """Read up to `count` messages and put them back (they stay in the queue)."""
        response = self.http.post(
            f"/queues/{self.vhost}/{quote(queue, safe='')}/get",
            json={"count": count, "ackmode": "reject_requeue_true", "encoding": "auto"},
        )
        assert response.status_code == 200, response.text
        return list(response.json())


@pytest.fixture
def management(settings: Settings) -> Management:
    return Management(settings)


def open_letters(product: Product) -> list[dict[str, Any]]:
    response = product.http.get("/dead-letters")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def letter_of(product: Product, job_id: str) -> dict[str, Any]:
    """The open dead letter of `job_id`, once it exists."""
    return dict(
        wait_until(
            lambda: next((d for d in open_letters(product) if d["job_id"] == job_id), None),
            10,
            message=f"a dead letter for {job_id}",
        )
    )


def transitions(product: Product, job_id: str) -> list[tuple[str | None, str]]:
    items = product.http.get(f"/jobs/{job_id}/logs").json()["items"]
    return [
        (e["data"].get("previous_status"), e["data"]["status"])
        for e in items
        if e["event"] == f"job_{e['data'].get('status')}"  # transitions only
    ]


def running_attempts(product: Product, job_id: str) -> list[int]:
    items = product.http.get(f"/jobs/{job_id}/logs").json()["items"]
    return [e["attempt"] for e in items if e["event"] == "job_running"]


def submit_chain(product: Product) -> tuple[str, str, str]:
    """A job that fails once, a dependent and a dependent of that dependent.

    Submitted while the scheduler is paused, so that both dependents are blocked when the
    root fails and are cancelled by its failure (`upstream_failed:<root>`).
    """
    assert product.http.post("/scheduler/pause").status_code == 200
    root = product.submit(FAILS_ONCE)["job_id"]
    child = product.submit({"type": "noop", "depends_on": [root]})["job_id"]
    grandchild = product.submit({"type": "noop", "depends_on": [child]})["job_id"]
    assert product.http.post("/scheduler/resume").status_code == 200
    return root, child, grandchild


def test_dead_messages_sit_in_the_named_dead_letter_queue(
    product: Product, management: Management
) -> None:
    # Given a job failing with a non-retryable error and one exhausting its retries
    permanent = product.submit({"type": "noop", "payload": {"error": "bad account number"}})
    exhausted = product.submit(
        {
            "type": "noop",
            "payload": {"retryable_error": "upstream 503"},
            "retry_config": {"max_attempts": 2, "initial_delay_seconds": 0.1},
        }
    )
    ids = {permanent["job_id"]: 1, exhausted["job_id"]: 2}  # job id -> its last attempt

    # When both have failed
    jobs = product.wait_all_terminal(list(ids), timeout=30)
    assert {j["status"] for j in jobs.values()} == {"failed"}

    # Then the named dead-letter exchange routes to the durable dead-letter queue
    exchange = management.get(f"/exchanges/{{vhost}}/{names.DEAD_LETTER_EXCHANGE}")
    assert (exchange["type"], exchange["durable"]) == ("fanout", True)
    bindings = management.get(f"/exchanges/{{vhost}}/{names.DEAD_LETTER_EXCHANGE}/bindings/source")
    assert names.DEAD_LETTER_QUEUE in {b["destination"] for b in bindings}
    jobs_queue = management.get(f"/queues/{{vhost}}/{names.JOBS_QUEUE}")
    assert jobs_queue["arguments"]["x-dead-letter-exchange"] == names.DEAD_LETTER_EXCHANGE
    assert jobs_queue["arguments"]["x-max-priority"] == names.MAX_MESSAGE_PRIORITY
    # and that queue holds both dead messages (the management stats refresh every ~5 s)
    wait_until(
        lambda: management.get(f"/queues/{{vhost}}/{names.DEAD_LETTER_QUEUE}").get("messages") == 2,
        20,
        0.5,
        "the dead-letter queue to count 2 messages",
    )
    # and each was rejected out of taskq.jobs, its body naming the job and its last attempt
    messages = management.peek(names.DEAD_LETTER_QUEUE, count=10)
    assert len(messages) == 2
    dead: dict[str, int] = {}
    for message in messages:
        death = message["properties"]["headers"]["x-death"][0]
        assert (death["reason"], death["queue"]) == ("rejected", names.JOBS_QUEUE)
        job_id, attempt = json.loads(message["payload"])["args"]
        dead[job_id] = attempt
    assert dead == ids
    # and peeking left them in place
    assert len(management.peek(names.DEAD_LETTER_QUEUE, count=10)) == 2

    # and the API lists them with their reasons
    reasons = {d["job_id"]: (d["reason"], d["attempts"]) for d in open_letters(product)}
    assert reasons == {
        permanent["job_id"]: ("non_retryable_error", 1),
        exhausted["job_id"]: ("retries_exhausted", 2),
    }


def test_unknown_dead_letter_is_404(product: Product) -> None:
    for method, path in [
        ("GET", "/dead-letters/987654"),
        ("POST", "/dead-letters/987654/replay"),
        ("DELETE", "/dead-letters/987654"),
    ]:
        response = product.http.request(method, path)
        assert response.status_code == 404, (method, response.text)
        assert response.json()["error"]["code"] == "dead_letter_not_found"


def test_get_and_discard(product: Product) -> None:
    # Given a failed job's dead letter
    job_id = product.submit({"type": "invalid_operation", "payload": {"error": "no such ledger"}})[
        "job_id"
    ]
    letter = letter_of(product, job_id)

    # When it is fetched
    fetched = product.http.get(f"/dead-letters/{letter['id']}").json()

    # Then it tells what died, why and the message that carried it
    assert fetched == letter
    assert fetched["type"] == "invalid_operation"
    assert (fetched["reason"], fetched["attempts"]) == ("non_retryable_error", 1)
    assert "no such ledger" in fetched["last_error"]
    assert fetched["original_message"]["args"] == [job_id, 1]
    assert fetched["original_message"]["queue_name"] == names.JOBS_QUEUE
    assert fetched["resolved_at"] is None

    # When it is discarded
    response = product.http.delete(f"/dead-letters/{letter['id']}")

    # Then it leaves the list, is kept as discarded, and the job stays failed
    assert response.status_code == 204
    assert open_letters(product) == []
    assert product.http.get(f"/dead-letters/{letter['id']}").json()["resolution"] == "discarded"
    assert product.job(job_id)["status"] == "failed"
    # and it can be neither discarded again nor replayed
    again = product.http.delete(f"/dead-letters/{letter['id']}")
    assert again.status_code == 409, again.text
    replay = product.http.post(f"/dead-letters/{letter['id']}/replay")
    assert replay.status_code == 409, replay.text
    assert replay.json()["error"]["code"] == "not_replayable"


def test_replay_runs_the_job_again_with_a_fresh_attempt_budget(product: Product) -> None:
    # Given a failed job (its only attempt failed) and its two cancelled descendants
    root, child, grandchild = submit_chain(product)
    jobs = product.wait_all_terminal([root, child, grandchild])
    assert jobs[root]["status"] == "failed"
    assert {jobs[child]["cancel_reason"], jobs[grandchild]["cancel_reason"]} == {
        f"upstream_failed:{root}"
    }
    first = letter_of(product, root)

    # When its dead letter is replayed
    response = product.http.post(f"/dead-letters/{first['id']}/replay")

    # Then the letter is resolved, and the job runs again from attempt 1 (its fault
    # injection counts attempts, so it fails again: a second dead letter)
    assert response.status_code == 200, response.text
    assert response.json()["resolution"] == "replayed"
    second = wait_until(
        lambda: next((d for d in open_letters(product) if d["id"] != first["id"]), None),
        15,
        message="a second dead letter",
    )
    assert (second["job_id"], second["attempts"]) == (root, 1)
    assert running_attempts(product, root) == [1, 1]
    assert ("failed", "pending") in transitions(product, root)
    assert product.job(root)["status"] == "failed"
    # and its descendants went back to blocked, then were cancelled again
    for job_id in (child, grandchild):
        job = product.wait_for_status(job_id, "cancelled")
        assert job["cancel_reason"] == f"upstream_failed:{root}"
        assert transitions(product, job_id)[-2:] == [
            ("cancelled", "blocked"),
            ("blocked", "cancelled"),
        ]
    # and the replayed letter cannot be replayed twice
    twice = product.http.post(f"/dead-letters/{first['id']}/replay")
    assert twice.status_code == 409, twice.text


def test_replay_after_the_cause_is_fixed_completes_the_dependents(
    product: Product, engine: sa.Engine
) -> None:
    # Given a failed job and its two cancelled descendants
    root, child, grandchild = submit_chain(product)
    product.wait_all_terminal([root, child, grandchild])
    letter = letter_of(product, root)
    # and the cause of the failure fixed (here: the fault injection removed)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET payload = '{}' WHERE id = :id"), {"id": root})

    # When its dead letter is replayed
    response = product.http.post(f"/dead-letters/{letter['id']}/replay")
    assert response.status_code == 200, response.text

    # Then the job completes on a fresh attempt 1 and its descendants run after it
    jobs = product.wait_all_terminal([root, child, grandchild])
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert jobs[root]["attempts"] == 1
    assert running_attempts(product, root) == [1, 1]
    assert jobs[root]["finished_at"] <= jobs[child]["started_at"]
    assert jobs[child]["finished_at"] <= jobs[grandchild]["started_at"]
    for job_id in (child, grandchild):
        assert jobs[job_id]["cancel_reason"] is None
        assert transitions(product, job_id)[-4:] == [
            ("cancelled", "blocked"),
            ("blocked", "pending"),
            ("pending", "running"),
            ("running", "completed"),
        ]
    assert open_letters(product) == []
