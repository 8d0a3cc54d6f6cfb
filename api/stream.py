"""The live event stream: job_events -> this API process -> WebSocket clients.

Every transaction that inserts job_events sends one empty `NOTIFY job_events` (a statement
trigger, migration 0011; PostgreSQL folds a transaction's identical notifications into
one), whichever process (API or any worker) made it. One LISTEN connection per API
process wakes its reader, which, while WebSocket clients are subscribed, reads the rows
committed since its last read in id order (`EventCursor`: the ids of transactions still in
flight are read when they commit) and fans the status changes and progress reports out to
the clients, each through a bounded queue (a slow client loses events, it does not slow
the others). With nobody subscribed nothing is read, and no transaction pays for building
a payload nobody reads; a reconnected listener loses nothing, since the reader catches up
by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa

from api.event_cursor import EventCursor
from queue_service import metrics, names
from queue_service.logging import get_logger

log = get_logger(__name__)

# Rows per read; a read that fills it is followed at once by the next.
READ_LIMIT = 2000
# How many of the newest events a first subscriber's cursor looks at for transactions
# still in flight.
START_WINDOW = 10_000

# Every row above the position or in its gaps (id order); the streamed ones carry what a
# client gets: status changes and progress reports, not token events or log lines.
_READ = (
    "SELECT e.id, e.status IS NOT NULL OR e.event = 'job_progress' AS streamed, "
    "  e.event, e.job_id, j.type, e.status, e.previous_status, e.attempt, e.at, "
    "  CASE WHEN e.event = 'job_progress' THEN jsonb_build_object("
    "    'fraction', e.data -> 'fraction', 'message', left(e.data ->> 'message', 200)) END "
    "FROM job_events e JOIN jobs j ON j.id = e.job_id "
    "WHERE e.id > %(after)s OR e.id = ANY(%(gaps)s) "
    "ORDER BY e.id LIMIT %(limit)s"
)
_RECENT_IDS = "SELECT id FROM job_events ORDER BY id DESC LIMIT %s"
_LAST_ALLOCATED = (
    "SELECT coalesce(pg_sequence_last_value("
    "  pg_get_serial_sequence('job_events', 'id')::regclass), 0)"
)


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
        self._tasks: list[asyncio.Task[None]] = []
        self.listening = asyncio.Event()
        self._wake = asyncio.Event()  # something committed since the last read
        self._cursor: EventCursor | None = None  # None: nobody subscribed, nothing read
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._read_lock = asyncio.Lock()

    async def subscribe(self, stream_filter: StreamFilter) -> Subscription:
        """A new subscription, which gets the events that commit from now on."""
        subscription = Subscription(stream_filter)
        if self._cursor is None:
            try:
                async with self._read_lock:
                    await self._start_cursor()
            except Exception as error:  # PostgreSQL away: the reader starts it when back
                log.warning("stream_reader_unavailable", error=str(error))
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
        if not self._subscriptions:
            self._cursor = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_forever()),
            asyncio.create_task(self._read_forever()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_reader()

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
                    self._wake.set()  # what committed while not listening is read now
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # reconnect: PostgreSQL restarted or the link dropped
                self.listening.clear()
                log.warning("stream_listener_reconnecting", error=str(error))
                await asyncio.sleep(1.0)

    async def _read_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._subscriptions:
                continue
            try:
                async with self._read_lock:
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # PostgreSQL away: try again in a second
                log.warning("stream_reader_retrying", error=str(error))
                await self._close_reader()
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _catch_up(self) -> None:
        """Read what committed since the last read and send it to the subscribers."""
        if self._cursor is None:
            await self._start_cursor()
        conn = await self._connection()
        while (cursor := self._cursor) is not None:
            rows = await (
                await conn.execute(
                    _READ, {"after": cursor.after, "gaps": cursor.gap_ids(), "limit": READ_LIMIT}
                )
            ).fetchall()
            cursor.take([row[0] for row in rows], time.monotonic())
            self._fan_out(_event(row) for row in rows if row[1])
            if len(rows) < READ_LIMIT:
                return

    async def _start_cursor(self) -> None:
        conn = await self._connection()
        recent = await (await conn.execute(_RECENT_IDS, (START_WINDOW,))).fetchall()
        last = await (await conn.execute(_LAST_ALLOCATED)).fetchone()
        self._cursor = EventCursor.starting_after(
            sorted(row[0] for row in recent), int(last[0]) if last else 0, time.monotonic()
        )

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._reader is None or self._reader.closed:
            self._reader = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        return self._reader

    async def _close_reader(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.close()
            self._reader = None


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    _id, _streamed, event_name, job_id, job_type, status, previous, attempt, at, progress = row
    event = {
        "event": event_name,
        "job_id": job_id,
        "type": job_type,
        "status": status,
        "previous_status": previous,
        "attempt": attempt,
        "at": at.isoformat(),
    }
    if progress is not None:  # job_progress: {fraction, message}
        event["progress"] = progress
    return event
