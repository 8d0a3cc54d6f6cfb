"""Running one attempt: sync and async handlers, time limits, cancel, errors, results.

The context writes to a list, `cancel_requested` is a plain function; the one test with
sockets keeps them on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.execution import (
    MAX_RESULT_BYTES,
    AttemptReport,
    ResultRejected,
    run_attempt,
    storable_result,
)
from queue_service.job_context import JobContext
from queue_service.job_types import (
    JobType,
    NonRetryableJobError,
    get_job_type,
    job_type,
    unregister,
)
from queue_service.json_limits import MAX_JSON_DEPTH
from queue_service.repository.events import JobEvent
from queue_service.retry_policy import AttemptResult

POLL = 0.05


class CardDeclined(Exception):
    pass


@pytest.fixture
def register() -> Iterator[Callable[..., JobType]]:
    """Register a handler under a throw-away name; returns its JobType."""
    names: list[str] = []

    def register_(handler: Callable[..., Any], **options: Any) -> JobType:
        name = f"t_exec_{len(names)}_{handler.__name__}"
        names.append(name)
        job_type(name, **options)(handler)
        jt = get_job_type(name)
        assert jt is not None
        return jt

    yield register_
    for name in names:
        unregister(name)


class Run:
    """One attempt and what its context wrote."""

    def __init__(self) -> None:
        self.events: list[JobEvent] = []
        self.context = JobContext("job_1", 1, sink=self.events.extend)
        self.seconds = 0.0

    def __call__(
        self,
        jt: JobType,
        payload: dict[str, Any] | None = None,
        timeout: float = 5.0,
        cancel_requested: Callable[[], bool] = lambda: False,
    ) -> AttemptReport:
        started = time.monotonic()
        report = run_attempt(jt, payload or {}, self.context, timeout, cancel_requested, POLL)
        self.seconds = time.monotonic() - started
        return report


@pytest.fixture
def run() -> Run:
    return Run()


def sync_echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    ctx.logger.info("echoing", keys=sorted(payload))
    ctx.progress(1.0, "done")
    return {"echo": payload, "job": ctx.job_id, "attempt": ctx.attempt}


async def async_echo(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    await asyncio.sleep(0)
    ctx.logger.info("echoing", keys=sorted(payload))
    return {"echo": payload}


def test_a_sync_handler_runs_in_the_worker_thread(run: Run, register: Any) -> None:
    # Given a sync handler that notes its thread
    threads: list[int] = []

    def handler(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        threads.append(threading.get_ident())
        return sync_echo(payload, ctx)

    # When an attempt runs
    report = run(register(handler), {"a": 1})

    # Then it succeeded in this thread, its result, log line and progress kept
    assert report == AttemptReport(
        AttemptResult.SUCCEEDED, value={"echo": {"a": 1}, "job": "job_1", "attempt": 1}
    )
    assert threads == [threading.get_ident()]
    assert [(e.event, e.message, e.data) for e in run.events] == [
        ("job_log", "echoing", {"keys": ["a"]}),
        ("job_progress", "done", {"fraction": 1.0, "message": "done"}),
    ]


def test_async_handlers_share_one_event_loop_per_thread(register: Any) -> None:
    # Given an async handler that notes its event loop
    loops: list[asyncio.AbstractEventLoop] = []

    async def handler(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        loops.append(asyncio.get_running_loop())
        return await async_echo(payload, ctx)

    jt = register(handler)

    # When three attempts run in this thread
    reports = [Run()(jt, {"n": n}) for n in range(3)]

    # Then each succeeded, all on the same loop
    assert [r.value for r in reports] == [{"echo": {"n": n}} for n in range(3)]
    assert len(set(map(id, loops))) == 1


def test_an_async_handler_sees_its_sockets_and_wake_ups_from_other_threads(
    run: Run, register: Any
) -> None:
    # Given an async handler that talks to a server on its own loop (127.0.0.1) and then
    # waits for a value another thread hands to the loop (the loop's wake-up pipe)
    async def handler(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ledger\n")
        line = await reader.readline()
        writer.close()
        server.close()
        await server.wait_closed()

        loop = asyncio.get_running_loop()
        handed: asyncio.Future[str] = loop.create_future()
        threading.Timer(0.05, loop.call_soon_threadsafe, (handed.set_result, "posted")).start()
        return {"echo": line.decode().strip(), "handed": await handed}

    # When it runs
    report = run(register(handler), timeout=5)

    # Then both arrived
    assert report == AttemptReport(
        AttemptResult.SUCCEEDED, value={"echo": "ledger", "handed": "posted"}
    )


@pytest.mark.parametrize("is_async", [False, True])
def test_a_handler_over_its_time_limit_is_stopped(run: Run, register: Any, is_async: bool) -> None:
    # Given a handler that would run for a minute (sync: busy in Python; async: awaiting)
    def sync_forever(payload: dict[str, Any], ctx: JobContext) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.01)

    async def async_forever(payload: dict[str, Any], ctx: JobContext) -> None:
        await asyncio.sleep(60)

    # When it runs with a 0.3 s limit
    report = run(register(async_forever if is_async else sync_forever), timeout=0.3)

    # Then it is stopped soon after the limit, as a timeout, its context told to stop
    assert report == AttemptReport(AttemptResult.TIMEOUT, "timed out after 0.3 s")
    assert 0.3 <= run.seconds < 1.5
    assert run.context.should_stop() and run.context.stop_requested.is_set()


def test_a_sync_handler_blocked_in_c_is_stopped_when_the_call_returns(
    run: Run, register: Any
) -> None:
    # Given a sync handler blocked in one 1-second C call, then doing more work
    after_the_call: list[bool] = []

    def blocked(payload: dict[str, Any], ctx: JobContext) -> None:
        time.sleep(1.0)
        after_the_call.append(True)
        time.sleep(5)

    # When it runs with a 0.2 s limit
    report = run(register(blocked), timeout=0.2)

    # Then the attempt ends when the call returns, as a timeout, nothing after it ran
    assert report.result is AttemptResult.TIMEOUT
    assert 0.9 <= run.seconds < 2.5
    assert after_the_call == []


def test_cooperative_sync_code_sees_the_stop_request(run: Run, register: Any) -> None:
    # Given a sync handler that swallows every exception but checks should_stop()
    seen: list[bool] = []

    def cooperative(payload: dict[str, Any], ctx: JobContext) -> str:
        while True:
            try:
                if ctx.should_stop():
                    seen.append(True)
                    return "stopped cleanly"
                time.sleep(0.01)
            except BaseException:  # even the interrupt: it must still see the event
                continue

    # When it runs past its limit
    report = run(register(cooperative), timeout=0.2)

    # Then it stops itself, and the attempt is still a timeout
    assert seen == [True]
    assert report.result is AttemptResult.TIMEOUT


@pytest.mark.parametrize("is_async", [False, True])
def test_a_cancel_request_stops_a_running_handler(run: Run, register: Any, is_async: bool) -> None:
    # Given a long handler, and a cancel requested on the third poll
    polls: list[int] = []

    def cancel_requested() -> bool:
        polls.append(1)
        return len(polls) >= 3

    def sync_long(payload: dict[str, Any], ctx: JobContext) -> None:
        for _ in range(6000):
            time.sleep(0.01)

    async def async_long(payload: dict[str, Any], ctx: JobContext) -> None:
        await asyncio.sleep(60)

    # When it runs
    report = run(register(async_long if is_async else sync_long), cancel_requested=cancel_requested)

    # Then it is cancelled promptly
    assert report == AttemptReport(AttemptResult.CANCELLED, "cancelled while running")
    assert run.seconds < 2


def test_a_database_error_in_the_cancel_poll_is_not_a_cancel(run: Run, register: Any) -> None:
    # Given a cancel poll that cannot reach PostgreSQL
    calls: list[int] = []

    def unreachable() -> bool:
        calls.append(1)
        raise OSError("connection refused")

    def short(payload: dict[str, Any], ctx: JobContext) -> str:
        time.sleep(0.4)
        return "done"

    # When a handler runs through several polls
    report = run(register(short), cancel_requested=unreachable)

    # Then polling went on and the handler finished normally
    assert len(calls) >= 3
    assert report == AttemptReport(AttemptResult.SUCCEEDED, value="done")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CardDeclined("card 4242 declined"), AttemptResult.PERMANENT_ERROR),
        (NonRetryableJobError("bad input"), AttemptResult.PERMANENT_ERROR),
        (ConnectionError("provider down"), AttemptResult.RETRYABLE_ERROR),
    ],
)
@pytest.mark.parametrize("is_async", [False, True])
def test_exceptions_keep_their_traceback_and_non_retryable_ones_fail_at_once(
    run: Run, register: Any, is_async: bool, error: Exception, expected: AttemptResult
) -> None:
    # Given a handler of a type declaring CardDeclined non-retryable, raising `error`
    def charge_card(payload: dict[str, Any], ctx: JobContext) -> None:
        raise error

    async def charge_card_async(payload: dict[str, Any], ctx: JobContext) -> None:
        raise error

    jt = register(charge_card_async if is_async else charge_card, non_retryable=(CardDeclined,))

    # When it runs
    report = run(jt)

    # Then the outcome follows the declared exceptions, the traceback names the raise
    assert report.result is expected
    assert report.error == f"{type(error).__name__}: {error}"
    assert report.traceback is not None and "raise error" in report.traceback
    # and the traceback is one of the job's log lines
    failure = [e for e in run.events if e.level == "error"]
    assert [e.data["traceback"] for e in failure] == [report.traceback]


def nested(depth: int) -> Any:
    """A list nested `depth` levels deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def cyclic() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("x" * (MAX_RESULT_BYTES + 1), "limit is 65536"),
        ({"score": math.nan}, "not storable as JSON"),
        ({"at": threading.Lock()}, "not storable as JSON"),
        (nested(MAX_JSON_DEPTH + 1), f"the limit is {MAX_JSON_DEPTH}"),
        (nested(5_000), f"the limit is {MAX_JSON_DEPTH} levels"),
        (cyclic(), "not storable as JSON"),
    ],
    ids=["too-large", "nan", "not-json", "too-deep", "far-too-deep", "cycle"],
)
def test_a_result_that_cannot_be_stored_fails_the_job_without_retry(
    run: Run, register: Any, value: Any, reason: str
) -> None:
    def handler(payload: dict[str, Any], ctx: JobContext) -> Any:
        return value

    report = run(register(handler))
    assert report.result is AttemptResult.PERMANENT_ERROR
    assert report.error is not None and reason in report.error


def test_a_result_at_the_depth_limit_is_stored(run: Run, register: Any) -> None:
    def handler(payload: dict[str, Any], ctx: JobContext) -> Any:
        return nested(MAX_JSON_DEPTH)

    assert run(register(handler)).value == nested(MAX_JSON_DEPTH)


def test_log_data_too_deep_to_store_is_kept_as_text(run: Run, register: Any) -> None:
    def handler(payload: dict[str, Any], ctx: JobContext) -> None:
        ctx.logger.info("deep", tree=nested(MAX_JSON_DEPTH - 1), n=1)  # the line adds one
        ctx.logger.info("deeper", tree=nested(MAX_JSON_DEPTH + 5), n=2)
        ctx.logger.info("loop", tree=cyclic(), n=3)

    run(register(handler))
    data = {e.message: e.data for e in run.events if e.event == "job_log"}
    assert data["deep"] == {"tree": nested(MAX_JSON_DEPTH - 1), "n": 1}
    assert isinstance(data["deeper"]["tree"], str) and data["deeper"]["n"] == "2"
    assert isinstance(data["loop"]["tree"], str)


def test_a_result_is_normalised_to_json(run: Run, register: Any) -> None:
    def handler(payload: dict[str, Any], ctx: JobContext) -> Any:
        return {"pair": (1, 2), 3: "three"}

    assert run(register(handler)).value == {"pair": [1, 2], "3": "three"}


def test_log_lines_are_flushed_in_batches_while_the_attempt_runs(register: Any) -> None:
    # Given a sink that counts its calls, and a handler logging 200 lines over ~0.5 s
    batches: list[int] = []
    lines: list[int] = []

    def sink(events: Sequence[Any]) -> None:
        batches.append(len(events))
        lines.append(sum(1 for event in events if event.event != "job_progress"))

    context = JobContext("job_1", 1, sink=sink)

    def chatty(payload: dict[str, Any], ctx: JobContext) -> None:
        for n in range(200):
            ctx.logger.info("line", n=n)
            ctx.progress(n / 200)
            time.sleep(0.0025)

    # When it runs
    run_attempt(register(chatty), {}, context, 5, lambda: False, POLL)

    # Then every line was written, in a few batches (at most one per 0.2 s, plus the last)
    assert sum(lines) == 200
    # each batch also carries the latest progress, if there was any since the last one
    assert sum(batches) - sum(lines) <= len(batches)
    assert 2 <= len(batches) <= 6


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300)


@settings(max_examples=300, deadline=None)
@given(
    st.none()
    | _scalars
    | st.dictionaries(st.text(max_size=300), _scalars, max_size=20)
    | st.lists(_scalars, max_size=5)
)
def test_a_flat_result_skips_the_checks_but_is_stored_as_they_would_store_it(value: Any) -> None:
    # Given any small value: the fast path (a flat dict of scalars) or the full checks
    # Then the stored value is what JSON gives back, or the value is rejected, as the
    # full checks decide
    try:
        expected: Any = json.loads(json.dumps(value, allow_nan=False))
        too_big = len(json.dumps(value, allow_nan=False).encode()) > MAX_RESULT_BYTES
    except ValueError:  # NaN or an infinity
        expected, too_big = ResultRejected, False
    if too_big:
        expected = ResultRejected
    try:
        stored: Any = storable_result(value)
    except ResultRejected:
        stored = ResultRejected
    assert stored == expected or (stored is not ResultRejected and _same_json(stored, expected))


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
