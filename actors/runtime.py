"""The per-process runtime: settings, database engine, broker and the attempt writer,
built once per process.

Each worker process (and the scheduler) builds its own; nothing here is shared between
processes, and nothing holds business state: PostgreSQL does.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import sqlalchemy as sa

from actors.writer import AttemptWriter
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.settings import Settings


class BusyThreads:
    """How many of this process's threads run a job's handler right now (AttemptClaim
    counts a claimed attempt's start and its message's end; the heartbeat reports it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = 0

    def started(self) -> None:
        with self._lock:
            self._busy += 1

    def ended(self) -> None:
        with self._lock:
            self._busy -= 1

    @property
    def count(self) -> int:
        return self._busy


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: sa.Engine
    broker: TaskQueueBroker
    worker_name: str
    writer: AttemptWriter
    busy_threads: BusyThreads = field(default_factory=BusyThreads)


_runtime: Runtime | None = None


def install_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("actors.app.setup() was not called in this process")
    return _runtime
