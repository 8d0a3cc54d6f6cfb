"""The attempt monitor's thread: woken only when a new attempt is due before it would wake.

A monitor of its own per test (not the process's), contexts writing to a list.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from actors.attempt_monitor import AttemptMonitor, Watch
from queue_service.job_context import JobContext
from queue_service.retry_policy import AttemptResult

POLL = 0.5


class CountingMonitor(AttemptMonitor):
    """Counts the passes of the monitor's loop: one per wake-up, timed or notified."""

    def __init__(self) -> None:
        self.passes = 0
        super().__init__()

    def _due(self, now: float) -> tuple[list[Watch], list[Watch], list[Watch]]:
        self.passes += 1
        return super()._due(now)


@pytest.fixture
def monitor() -> Iterator[CountingMonitor]:
    monitor = CountingMonitor()
    yield monitor
    monitor._io.shutdown(wait=False)


def watch(timeout: float, job: int) -> Watch:
    return Watch(
        JobContext(f"job_{job}", 1, sink=lambda events: None), timeout, lambda: False, POLL
    )


def test_short_attempts_do_not_wake_the_monitor_one_by_one(monitor: CountingMonitor) -> None:
    # Given a monitor that has seen one attempt (it learns the poll interval)
    first = watch(30.0, 0)
    monitor.add(first)
    monitor.remove(first)
    time.sleep(0.05)
    passes_before = monitor.passes

    # When 100 short attempts come and go, 2 ms apart, each gone before the monitor's
    # thread gets to run (as a no-op job is, on a busy worker)
    for job in range(1, 101):
        attempt = watch(30.0, job)
        monitor.add(attempt)
        monitor.remove(attempt)
        time.sleep(0.002)

    # Then the monitor woke at most on its own schedule (every POLL seconds), not per
    # attempt: ~100 passes when every registration woke it
    assert monitor.passes - passes_before <= 3


def test_an_attempt_due_before_the_monitor_wakes_is_still_stopped_on_time(
    monitor: CountingMonitor,
) -> None:
    # Given a monitor asleep until its next poll
    idle = watch(30.0, 0)
    monitor.add(idle)
    time.sleep(0.05)

    # When an attempt with a time limit shorter than that sleep is added
    started = time.monotonic()
    short = watch(0.1, 1)
    monitor.add(short)

    # Then it is stopped at its time limit, not at the monitor's next poll
    assert short.context.stop_requested.wait(timeout=2.0)
    assert time.monotonic() - started < POLL
    assert short.reason is AttemptResult.TIMEOUT
    monitor.remove(short)
    monitor.remove(idle)
