"""The Python client against the running product (api and two worker processes)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from taskq_client import (
    AsyncTaskQueueClient,
    Conflict,
    ConnectionFailed,
    Invalid,
    JobEvent,
    JobRequest,
    NotFound,
    RetryPolicy,
    TaskQueueClient,
    WaitTimeout,
)
from tests.support.product import Product, free_port


@pytest.fixture
def client(product: Product) -> Iterator[TaskQueueClient]:
    """A client as users build it: from the base URL (and the product's key, if any)."""
    key = product.http.headers.get("Authorization", "").removeprefix("Bearer ") or None
    with TaskQueueClient(product.base_url, api_key=key) as client:
        yield client


def test_submit_wait_and_read_a_job(client: TaskQueueClient) -> None:
    # When a job is submitted and awaited
    accepted = client.submit({"type": "send_email", "priority": "high"})
    job = client.wait_for(accepted.job_id, timeout=30)

    # Then it completed, with a generated idempotency key, its result and its logs
    assert accepted.created and job.status == "completed" and job.terminal
    assert job.idempotency_key is not None
    assert job.result == {"slept_seconds": pytest.approx(0.025)}
    events = [e.event for e in client.logs(job.job_id)]
    assert events[0] == "job_pending" and "job_completed" in events


def test_a_repeated_submission_returns_the_original(client: TaskQueueClient) -> None:
    first = client.submit({"type": "noop"}, idempotency_key="invoice-42")
    again = client.submit({"type": "noop"}, idempotency_key="invoice-42")
    assert (again.job_id, again.created) == (first.job_id, False)
    with pytest.raises(Conflict) as caught:
        client.submit({"type": "send_email"}, idempotency_key="invoice-42")
    assert caught.value.code == "idempotency_conflict"


def test_a_batch_with_dependencies_and_the_same_batch_again(client: TaskQueueClient) -> None:
    # Given a batch whose first job depends on the second
    jobs: list[JobRequest] = [{"job_id": "child", "depends_on": ["parent"]}, {"job_id": "parent"}]

    # When it is submitted, then submitted again as is
    first = client.submit_batch(jobs)
    again = client.submit_batch(jobs)

    # Then the second time returns the stored jobs instead of a conflict
    assert [a.job_id for a in first] == ["child", "parent"] and all(a.created for a in first)
    assert [a.job_id for a in again] == ["child", "parent"] and not any(a.created for a in again)
    done = client.wait(["child", "parent"], timeout=30)
    assert done["child"].started_at >= done["parent"].finished_at  # type: ignore[operator]


def test_a_cycle_is_an_invalid_error_naming_it(client: TaskQueueClient) -> None:
    with pytest.raises(Invalid) as caught:
        client.submit_batch(
            [{"job_id": "x", "depends_on": ["y"]}, {"job_id": "y", "depends_on": ["x"]}]
        )
    assert caught.value.status_code == 422 and caught.value.code == "dependency_cycle"
    assert caught.value.details["cycle"] == ["x", "y", "x"]
    with pytest.raises(NotFound):
        client.get_job("x")


def test_list_filters_and_follows_the_cursor(client: TaskQueueClient) -> None:
    ids = {client.submit({"type": "noop", "priority": "low"}).job_id for _ in range(5)}
    client.submit({"type": "noop", "priority": "high"})
    listed = list(client.iter_jobs(page_size=2, priority="low"))
    assert {job.job_id for job in listed} == ids and len(listed) == 5
    assert client.list_jobs(limit=2, priority="low").next_cursor is not None


def test_pause_cancel_resume_and_stats(client: TaskQueueClient) -> None:
    assert client.pause().paused
    try:
        job_id = client.submit({"type": "noop"}).job_id
        assert client.get_job(job_id).waiting_reason == "paused"
        assert client.cancel(job_id).status == "cancelled"
        with pytest.raises(Conflict):
            client.cancel(job_id)
        assert client.stats()["scheduler_paused"] is True
    finally:
        assert not client.resume().paused


def test_dead_letters_list_show_replay_and_discard(client: TaskQueueClient) -> None:
    # Given two jobs that fail for good
    failed = [client.submit({"type": "invalid_operation"}).job_id for _ in range(2)]
    client.wait(failed, timeout=30)
    letters = {d.job_id: d for d in client.iter_dead_letters()}
    assert set(letters) == set(failed)
    first, second = (letters[i] for i in failed)
    assert client.dead_letter(first.id).reason == "non_retryable_error"

    # When one is replayed and the other discarded
    replayed = client.replay(first.id)
    client.discard(second.id)

    # Then the first job runs again (and fails again), the second letter is resolved
    assert replayed.job_id == failed[0]
    again = client.wait_for(failed[0], timeout=30)
    assert again.status == "failed"
    assert client.dead_letter(second.id).resolution is not None


def test_waiting_too_long_raises_with_the_last_state(client: TaskQueueClient) -> None:
    job_id = client.submit({"type": "noop", "run_at": "2999-01-01T00:00:00Z"}).job_id
    with pytest.raises(WaitTimeout) as caught:
        client.wait_for(job_id, timeout=0.3)
    assert caught.value.jobs[job_id].status == "scheduled"
    client.cancel(job_id)


def test_stream_delivers_a_jobs_transitions(client: TaskQueueClient) -> None:
    # Given a subscription to one job id
    events: list[JobEvent] = []
    subscribed = threading.Event()

    def listen() -> None:
        for event in client.stream(job_ids=["streamed"]):
            if event.event == "subscribed":
                subscribed.set()
                continue
            events.append(event)
            if event.status == "completed":
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)

    # When that job runs
    client.submit({"job_id": "streamed", "type": "noop"})
    listener.join(20)

    # Then its transitions arrive in order
    assert [e.status for e in events] == ["pending", "running", "completed"]


def test_the_async_client_submits_waits_and_streams(product: Product) -> None:
    key = product.http.headers.get("Authorization", "").removeprefix("Bearer ") or None

    async def scenario() -> tuple[str, list[str | None]]:
        async with AsyncTaskQueueClient(product.base_url, api_key=key) as client:
            statuses: list[str | None] = []

            async def listen() -> None:
                async for event in client.stream(job_ids=["async_job"]):
                    statuses.append(event.status)
                    if event.status == "completed":
                        return

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.5)  # the subscription is set up
            accepted = await client.submit({"job_id": "async_job", "type": "noop"})
            job = await client.wait_for(accepted.job_id, timeout=30)
            await asyncio.wait_for(listener, 20)
            return job.status, statuses

    status, statuses = asyncio.run(scenario())
    assert status == "completed"
    assert statuses == [None, "pending", "running", "completed"]  # None: `subscribed`


def test_an_unreachable_api_is_retried_then_raised() -> None:
    client = TaskQueueClient(
        f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=3, initial_delay=0.01)
    )
    with pytest.raises(ConnectionFailed):
        client.stats()
