"""WS /jobs/stream: live status changes from every process, filtered per subscriber."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.product import Product, bearer

EVENT_FIELDS = {"event", "job_id", "status", "previous_status", "attempt", "at"}
Event = dict[str, Any]


@contextmanager
def subscribe(product: Product, params: list[tuple[str, str]]) -> Iterator[ClientConnection]:
    """A stream connection whose api process already LISTENs, so no event can be missed."""
    url = f"ws://127.0.0.1:{product.api_port}/jobs/stream?{urlencode(params)}"
    deadline = time.monotonic() + 10
    while True:
        with connect(
            url, open_timeout=10, close_timeout=2, additional_headers=bearer(product.key("read"))
        ) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello["event"] == "subscribed", hello
            if hello["listening"]:
                yield ws
                return
        assert time.monotonic() < deadline, "the api never started listening for events"
        time.sleep(0.2)


def events_until(
    ws: ClientConnection, last: Callable[[Event], bool], timeout: float = 30
) -> list[Event]:
    """Every event received up to and including the first for which `last` is true."""
    received: list[Event] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; received {received}"
        try:
            event = json.loads(ws.recv(timeout=remaining))
        except TimeoutError as error:
            raise AssertionError(f"timed out; received {received}") from error
        received.append(event)
        if last(event):
            return received


def test_a_job_streams_pending_running_completed_in_order(product: Product) -> None:
    # Given a subscriber to one job id, not yet submitted
    with subscribe(product, [("job_id", "streamed_1")]) as ws:
        # When that job and another one are submitted and run
        product.submit({"job_id": "other_1", "type": "noop"})
        product.submit({"job_id": "streamed_1", "type": "noop"})
        events = events_until(
            ws, lambda e: e["job_id"] == "streamed_1" and e["status"] == "completed"
        )

    # Then it receives exactly that job's transitions, in order, with every field
    assert [(e["previous_status"], e["status"]) for e in events] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "completed"),
    ]
    assert [e["attempt"] for e in events] == [0, 1, 1]
    for event in events:
        assert set(event) >= EVENT_FIELDS
        assert event["job_id"] == "streamed_1"
        assert isinstance(event["event"], str) and event["event"]
        assert event["at"]
    times = [datetime.fromisoformat(e["at"]) for e in events]
    assert times == sorted(times)


def test_type_filter_excludes_other_types(product: Product) -> None:
    # Given a subscriber to send_email jobs only
    with subscribe(product, [("type", "send_email")]) as ws:
        # When a noop job runs to completion, and then a send_email job
        noop = product.submit({"type": "noop"})["job_id"]
        product.wait_for_status(noop, "completed")
        email = product.submit({"type": "send_email", "payload": {"duration_seconds": 0}})
        events = events_until(
            ws, lambda e: e["job_id"] == email["job_id"] and e["status"] == "completed"
        )

    # Then only the send_email job's events arrive (NOTIFY keeps commit order, so any
    # event of the earlier noop job would have come first)
    assert {e["job_id"] for e in events} == {email["job_id"]}
    assert {e["type"] for e in events} == {"send_email"}
    assert [e["status"] for e in events] == ["pending", "running", "completed"]


def test_status_filter_sends_only_that_status(product: Product) -> None:
    # Given a subscriber to completions only
    with subscribe(product, [("status", "completed")]) as ws:
        # When one job fails and then two jobs complete
        failing = product.submit({"type": "invalid_operation"})["job_id"]
        product.wait_for_status(failing, "failed")
        ok = [product.submit({"job_id": f"ok_{i}", "type": "noop"})["job_id"] for i in range(2)]
        completed: set[str] = set()

        def both_completed(event: Event) -> bool:
            completed.add(event["job_id"])
            return completed >= set(ok)

        events = events_until(ws, both_completed)

    # Then exactly one completion per successful job arrives, and nothing else
    assert sorted(e["job_id"] for e in events) == sorted(ok)
    assert {(e["previous_status"], e["status"]) for e in events} == {("running", "completed")}


def test_repeated_job_id_filter_follows_several_jobs(product: Product) -> None:
    # Given a subscriber to two job ids
    with subscribe(product, [("job_id", "watch_a"), ("job_id", "watch_b")]) as ws:
        # When those two and a third job run
        for job_id in ("watch_a", "ignored", "watch_b"):
            product.submit({"job_id": job_id, "type": "noop"})
        finished: set[str] = set()

        def both_finished(event: Event) -> bool:
            if event["status"] == "completed":
                finished.add(event["job_id"])
            return finished == {"watch_a", "watch_b"}

        events = events_until(ws, both_finished)

    # Then it hears both watched jobs' full histories, and nothing of the third
    for job_id in ("watch_a", "watch_b"):
        assert [e["status"] for e in events if e["job_id"] == job_id] == [
            "pending",
            "running",
            "completed",
        ]
    assert {e["job_id"] for e in events} == {"watch_a", "watch_b"}


def test_the_api_lets_go_of_subscribers_and_stops_promptly(start_product) -> None:  # type: ignore[no-untyped-def]
    # Given an api with a subscriber that left (its filter matches nothing that will ever
    # happen) and one still connected
    product: Product = start_product(workers=0)
    with subscribe(product, [("job_id", "never_submitted")]):
        pass
    with subscribe(product, [("status", "completed")]) as ws:
        # When the api is asked to stop
        api = product.processes[0]
        api.popen.send_signal(signal.SIGTERM)
        # Then the connected subscriber is told the server is going away
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    # and the api exits within seconds, instead of waiting on subscribers forever
    try:
        code = api.popen.wait(timeout=10)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the api did not stop:\n{api.log_tail()}") from error
    # (uvicorn re-raises the signal once it has shut down cleanly)
    assert code in (0, -signal.SIGTERM), api.log_tail()


def test_an_event_committed_after_later_ones_still_reaches_the_stream(
    product: Product, engine: sa.Engine
) -> None:
    # Given a subscriber to two jobs, and a transaction that wrote a progress event of the
    # first one (its id taken) and has not committed
    late, early = f"late_{uuid.uuid4().hex[:8]}", f"early_{uuid.uuid4().hex[:8]}"
    product.submit({"job_id": late, "type": "noop"})
    product.wait_all_terminal([late], timeout=30)
    with subscribe(product, [("job_id", late), ("job_id", early)]) as ws, engine.connect() as held:
        held.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, level, event, attempt, message, data) "
                "VALUES (:job_id, now(), 'info', 'job_progress', 1, 'late', "
                '  \'{"fraction": 0.5, "message": "late"}\')'
            ),
            {"job_id": late},
        )
        # When another job's events, with later ids, commit and are streamed first
        product.submit({"job_id": early, "type": "noop"})
        first = events_until(ws, lambda e: e["job_id"] == early and e["status"] == "completed")
        # and only then the held transaction commits
        held.commit()
        then = events_until(ws, lambda e: e["job_id"] == late)

    # Then the held event still reaches the subscriber, once, after the others
    assert [e["job_id"] for e in first] == [early, early, early]
    assert [(e["event"], e.get("progress")) for e in then] == [
        ("job_progress", {"fraction": 0.5, "message": "late"})
    ]
