"""The live event stream: PostgreSQL NOTIFY -> this API process -> WebSocket clients.

Every INSERT into job_events fires `pg_notify('job_events', ...)` once from a statement
trigger (a JSON array of its status changes and progress reports), in the transaction that
made them, so subscribers hear exactly what committed, whichever process
(API or any worker) made the change. One LISTEN connection per API process fans out to
its WebSocket clients, each through a bounded queue (a slow client loses events, it
does not slow the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa

from queue_service import metrics, names
from queue_service.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class StreamFilter:
    job_ids: frozenset[str] = frozenset()
    type: str | None = None
    status: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.job_ids and event.get("job_id") not in self.job_ids:
            return False
        if self.type is not None and event.get("type") != self.type:
            return False
        return self.status is None or event.get("status") == self.status


@dataclass(eq=False)
class Subscription:
    filter: StreamFilter
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=10_000)
    )
    dropped: int = 0


def libpq_url(database_url: str) -> str:
    url = sa.engine.make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class EventHub:
    def __init__(self, database_url: str) -> None:
        self._dsn = libpq_url(database_url)
        self._subscriptions: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def subscribe(self, stream_filter: StreamFilter) -> Subscription:
        subscription = Subscription(stream_filter)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _fan_out(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            for subscription in list(self._subscriptions):
                if not subscription.filter.matches(event):
                    continue
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscription.dropped += 1
                    metrics.stream_event_dropped()

    async def _listen_forever(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {names.JOB_EVENTS_CHANNEL}")
                    self.listening.set()
                    async for notify in conn.notifies():
                        if self._subscriptions:  # nobody listening: nothing to decode
                            self._fan_out(_events(notify.payload))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # reconnect: PostgreSQL restarted or the link dropped
                self.listening.clear()
                log.warning("stream_listener_reconnecting", error=str(error))
                await asyncio.sleep(1.0)


def _events(payload: str) -> list[dict[str, Any]]:
    """The events of one NOTIFY: a JSON array (one INSERT statement's status changes and
    progress reports, in order, chunked by the trigger to fit NOTIFY's payload limit)."""
    batch = json.loads(payload)
    return [_event(data) for data in (batch if isinstance(batch, list) else [batch])]


def _event(data: dict[str, Any]) -> dict[str, Any]:
    event = {
        "event": data.get("event"),
        "job_id": data.get("job_id"),
        "type": data.get("type"),
        "status": data.get("status"),
        "previous_status": data.get("previous_status"),
        "attempt": data.get("attempt"),
        "at": data.get("at"),
    }
    if data.get("data") is not None:  # job_progress: {fraction, message}
        event["progress"] = data["data"]
    return event
