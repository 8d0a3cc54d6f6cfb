"""The per-process runtime: settings, database engine, broker and the attempt writer,
built once per process.

Each worker process (and the scheduler) builds its own; nothing here is shared between
processes, and nothing holds business state: PostgreSQL does.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from actors.writer import AttemptWriter
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.settings import Settings


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    engine: sa.Engine
    broker: TaskQueueBroker
    worker_name: str
    writer: AttemptWriter


_runtime: Runtime | None = None


def install_runtime(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("actors.app.setup() was not called in this process")
    return _runtime
