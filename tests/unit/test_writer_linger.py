"""How the worker's writer gathers a flush: at once when idle, lingering under load until
the flush is full or every worker thread waits on it (pure: no flush runs here)."""

from __future__ import annotations

import threading

import sqlalchemy as sa
from dramatiq.brokers.stub import StubBroker

from actors.writer import AttemptWriter, _Request
from queue_service.lifecycle import AttemptEnd
from queue_service.retry_policy import AttemptResult
from queue_service.settings import Settings
from queue_service.worker_batch import ClaimRequest

LINGER_MS = 100.0  # far longer than a request arriving 10 ms later needs


def _writer(threads: int | None) -> AttemptWriter:
    settings = Settings(writer_linger_ms=LINGER_MS)
    engine = sa.create_engine("postgresql+psycopg://unused@127.0.0.1/unused")  # never used
    writer = AttemptWriter(engine, settings, StubBroker(), "test-worker")  # type: ignore[arg-type]
    writer.threads = threads
    return writer


def _claim(n: int) -> _Request:
    return _Request(ClaimRequest(f"job_{n}", 1), None)


def _end(n: int) -> _Request:
    return _Request(AttemptEnd(f"job_{n}", 1, AttemptResult.SUCCEEDED), None)


def _collect_with_late_arrival(writer: AttemptWriter, batch: list[_Request]) -> list[_Request]:
    """`_collect(batch)` while one more request arrives 10 ms after it starts."""
    late = _end(99)
    timer = threading.Timer(0.01, writer._requests.put, args=(late,))
    timer.start()
    try:
        writer._collect(batch)
    finally:
        timer.join()
    return batch


def test_an_idle_writer_flushes_at_once() -> None:
    # Given nothing waiting behind the first request
    writer = _writer(threads=8)
    batch = _collect_with_late_arrival(writer, [_claim(1)])
    # Then the batch does not wait for the request that comes 10 ms later
    assert [r.item.job_id for r in batch if r.item] == ["job_1"]


def test_under_load_the_writer_lingers_for_more() -> None:
    # Given requests already waiting behind the first, and threads not all waiting
    writer = _writer(threads=8)
    writer._requests.put(_end(2))
    batch = _collect_with_late_arrival(writer, [_claim(1)])
    # Then the batch takes the late request too
    assert [r.item.job_id for r in batch if r.item] == ["job_1", "job_2", "job_99"]


def test_no_lingering_once_every_thread_waits_for_a_claim() -> None:
    # Given a claim of each of the two threads in the batch, and another request waiting
    writer = _writer(threads=2)
    writer._requests.put(_claim(2))
    batch = _collect_with_late_arrival(writer, [_claim(1)])
    # Then nothing more can come from the threads: no wait for the late request
    assert [r.item.job_id for r in batch if r.item] == ["job_1", "job_2"]
