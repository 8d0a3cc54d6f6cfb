"""What a handler receives besides its payload: `ctx`.

    ctx.job_id, ctx.attempt            which attempt of which job this is
    ctx.logger.info("charged", id=..)  a line in GET /jobs/{id}/logs (event `job_log`)
    ctx.progress(0.5, "half way")      GET /jobs/{id} `progress` (event `job_progress`)
    ctx.should_stop()                  True once a time limit or cancel asks the job to stop
    ctx.stop_requested                 the same, as a threading.Event to wait on

Writes are bounded: log lines and progress are buffered and handed to the context's sink
(one call per batch) at most every `flush_interval` seconds, and at the end of the attempt
(`close`). Progress is coalesced: only the latest report of an interval is stored. A sink
failure loses those lines and is logged; it never fails the job.
"""

from __future__ import annotations

import json
import math
import reprlib
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from queue_service.json_limits import MAX_JSON_DEPTH, json_depth
from queue_service.logging import get_logger
from queue_service.repository.events import JobEvent, record_events

log = get_logger(__name__)

EventSink = Callable[[list[JobEvent]], None]

FLUSH_INTERVAL_SECONDS = 0.2
# Lines beyond this, in one attempt, are counted but not stored.
MAX_LOG_LINES_PER_ATTEMPT = 1000
MAX_MESSAGE_CHARS = 4000


def database_sink(engine: sa.Engine) -> EventSink:
    """The default sink: each batch of events in its own short transaction."""

    def write(events: list[JobEvent]) -> None:
        with engine.begin() as conn:
            record_events(conn, events)

    return write


def _storable(data: dict[str, Any]) -> dict[str, Any]:
    """Data as JSON can hold it: unknown objects as their str; NaN, infinities and values
    nested deeper than MAX_JSON_DEPTH (with the line's own object) stored as their repr."""
    try:
        stored = dict(json.loads(json.dumps(data, default=str, allow_nan=False)))
    except (TypeError, ValueError, RecursionError):  # NaN, a cycle, far too deep
        stored = None
    if stored is not None and json_depth(stored) <= MAX_JSON_DEPTH:
        return stored
    return {key: reprlib.repr(value) for key, value in data.items()}  # bounded, never deep


class JobLogger:
    """A structlog-like logger: `logger.info("event or message", key=value, ...)`."""

    def __init__(self, context: JobContext, bound: dict[str, Any] | None = None) -> None:
        self._context = context
        self._bound = bound or {}

    def bind(self, **values: Any) -> JobLogger:
        return JobLogger(self._context, {**self._bound, **values})

    def debug(self, message: str, **data: Any) -> None:
        self._context.log("debug", message, {**self._bound, **data})

    def info(self, message: str, **data: Any) -> None:
        self._context.log("info", message, {**self._bound, **data})

    def warning(self, message: str, **data: Any) -> None:
        self._context.log("warning", message, {**self._bound, **data})

    warn = warning

    def error(self, message: str, **data: Any) -> None:
        self._context.log("error", message, {**self._bound, **data})

    def critical(self, message: str, **data: Any) -> None:
        self._context.log("critical", message, {**self._bound, **data})

    def exception(self, message: str, **data: Any) -> None:
        """An error line carrying the traceback of the exception being handled."""
        self.error(message, **data, traceback=traceback.format_exc())


class JobContext:
    """The handler's view of its attempt. Thread-safe: the logger may be used from
    threads the handler starts."""

    def __init__(
        self,
        job_id: str,
        attempt: int,
        *,
        sink: EventSink | None = None,
        duration_scale: float = 1.0,
        flush_interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.duration_scale = duration_scale
        self._stop = False
        # Made when a handler first asks for it: most attempts never do, and an Event
        # (a Condition and two locks) per attempt showed in a worker's profile.
        self._stop_event: threading.Event | None = None
        self.logger = JobLogger(self)
        self._sink = sink
        self._flush_interval = flush_interval
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._lines: list[JobEvent] = []
        self._progress: JobEvent | None = None
        self._lines_seen = 0
        self._last_flush = -math.inf
        # Set by the attempt's supervisor: told when something waits to be flushed.
        self.on_buffered: Callable[[], None] | None = None

    def should_stop(self) -> bool:
        """True once the attempt was asked to stop (time limit or cancel): return soon."""
        return self._stop

    @property
    def stop_requested(self) -> threading.Event:
        """Set once the attempt is asked to stop: a threading.Event to wait on."""
        with self._lock:
            if self._stop_event is None:
                self._stop_event = threading.Event()
                if self._stop:
                    self._stop_event.set()
            return self._stop_event

    def request_stop(self) -> None:
        """Ask the handler to stop (the attempt monitor: time limit or cancel)."""
        with self._lock:
            self._stop = True
            event = self._stop_event
        if event is not None:
            event.set()

    def progress(self, fraction: float, message: str = "") -> None:
        """Report how far the job is, 0.0 to 1.0 (clamped), with an optional message."""
        value = float(fraction)
        if math.isnan(value):
            raise ValueError("progress fraction is NaN")
        value = min(1.0, max(0.0, value))
        text = str(message)[:MAX_MESSAGE_CHARS]
        event = self._event("job_progress", "info", text, {"fraction": value, "message": text})
        with self._lock:
            self._progress = event
        self._buffered()

    def log(self, level: str, message: str, data: dict[str, Any]) -> None:
        """Record one log line (the logger calls this)."""
        text = str(message)[:MAX_MESSAGE_CHARS]
        with self._lock:
            self._lines_seen += 1
            if self._lines_seen > MAX_LOG_LINES_PER_ATTEMPT:
                return
        event = self._event("job_log", level, text, _storable(data) if data else {})
        with self._lock:
            self._lines.append(event)
        self._buffered()

    def flush_due_at(self) -> float | None:
        """The monotonic time the buffered events should be written, None if none are."""
        with self._lock:
            if not self._lines and self._progress is None:
                return None
            return self._last_flush + self._flush_interval

    def flush(self) -> None:
        """Hand everything buffered to the sink, in the order it happened."""
        with self._flush_lock:
            with self._lock:
                events = self._lines
                if self._progress is not None:
                    events.append(self._progress)
                self._lines, self._progress = [], None
                self._last_flush = time.monotonic()
            if not events or self._sink is None:
                return
            events.sort(key=lambda e: e.at)
            try:
                self._sink(events)
            except Exception as error:
                log.warning(
                    "job_events_not_stored",
                    job_id=self.job_id,
                    count=len(events),
                    error=f"{type(error).__name__}: {error}",
                )

    def close(self) -> None:
        """End of the attempt: note dropped lines and flush what is left."""
        dropped = self._lines_seen - MAX_LOG_LINES_PER_ATTEMPT
        if dropped > 0:
            with self._lock:
                self._lines.append(
                    self._event(
                        "job_log", "warning", f"{dropped} more log lines were not stored", {}
                    )
                )
        self.flush()

    def _event(self, event: str, level: str, message: str, data: dict[str, Any]) -> JobEvent:
        return JobEvent(
            job_id=self.job_id,
            event=event,
            attempt=self.attempt,
            message=message,
            at=datetime.now(UTC),
            level=level,
            data=data,
        )

    def _buffered(self) -> None:
        notify = self.on_buffered
        if notify is not None:
            notify()


def build_context(
    job_id: str,
    attempt: int,
    engine: sa.Engine,
    *,
    duration_scale: float = 1.0,
    sink: EventSink | None = None,
) -> JobContext:
    """The context of one attempt, writing through `sink` (default: `database_sink`)."""
    return JobContext(
        job_id,
        attempt,
        sink=sink or database_sink(engine),
        duration_scale=duration_scale,
    )
