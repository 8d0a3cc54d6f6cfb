"""Structured JSON logs (structlog) with stable event names and bound job context.

One format for every line a process writes: the product's own structlog events and the
stdlib records of uvicorn, Dramatiq, pika and alembic all go through one stdlib handler
whose structlog `ProcessorFormatter` renders JSON with the same fields: `event`, `level`,
`timestamp` (ISO-8601, UTC), `logger`, `process` (api, worker, scheduler), `pid`, and
`job_id` / `attempt` where the line belongs to an attempt.

Secrets never reach a log line: passwords in URLs (`amqp://user:secret@host`) and bearer
tokens are masked in every rendered value, whichever code logged them.

The product's own events are rendered by structlog and written straight to the handler's
stream, under the handler's lock (so they never interleave with library lines): a worker
writes a line per attempt, and the stdlib path (a LogRecord, the logger tree, the
formatter) cost as much CPU per job as the job's database work.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

# Libraries whose loggers may carry handlers of their own (uvicorn's log config, the
# dramatiq CLI): their records must reach the one root handler instead.
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq", "periodiq")


# This process's id, read once and again in a forked child (os.getpid() is a system call,
# and a worker writes a line per attempt).
_pid = os.getpid()


def _note_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_note_fork)


def _process_fields(process: str) -> Processor:
    def add(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("process", process)
        event_dict["pid"] = _pid
        return event_dict

    return add


# The attempt the current thread (or task) is running: every line logged meanwhile, by the
# product, a handler or a library, carries its job_id and attempt. One context variable
# for both, merged by the processor below: structlog's `bound_contextvars` sets and resets
# a variable per key, which cost more than the worker's line for the attempt itself.
_ATTEMPT: ContextVar[tuple[str, int] | None] = ContextVar("taskq_log_attempt", default=None)


@contextmanager
def attempt_context(job_id: str, attempt: int) -> Iterator[None]:
    """Lines logged inside carry `job_id` and `attempt` (unless they name their own)."""
    token = _ATTEMPT.set((job_id, attempt))
    try:
        yield
    finally:
        _ATTEMPT.reset(token)


def _merge_attempt(_: Any, __: str, event_dict: EventDict) -> EventDict:
    current = _ATTEMPT.get()
    if current is not None:
        event_dict.setdefault("job_id", current[0])
        event_dict.setdefault("attempt", current[1])
    return event_dict


def _shared_processors(process: str) -> list[Processor]:
    return [
        _merge_attempt,
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _process_fields(process),
    ]


_URL_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):[^@/\s]+@")
_BEARER = re.compile(r"(?P<prefix>\bBearer\s+)[^\s\"',]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL passwords and bearer tokens replaced by `***`."""
    # Most values hold neither: a substring test is far cheaper than the two patterns.
    if "://" in text:
        text = _URL_PASSWORD.sub(r"\g<prefix>:***@", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\g<prefix>***", text)
    return text


def _redact_values(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact(value)  # replaces a value: the keys stay as they are
    return event_dict


def _fallback(value: Any) -> Any:
    """What structlog's JSONRenderer does with a value JSON cannot encode."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


# One encoder for every line: `json.dumps` with a `default` builds a new one per call.
_ENCODER = json.JSONEncoder(default=_fallback)


def _serialize(event_dict: Any, **_: Any) -> str:
    return _ENCODER.encode(event_dict)


# The last steps of every line, ours and the libraries'.
_RENDER: list[Processor] = [
    structlog.processors.format_exc_info,
    _redact_values,
    structlog.processors.JSONRenderer(serializer=_serialize),
]


def json_formatter(process: str = "api") -> logging.Formatter:
    """The formatter of library (stdlib) lines; also named by api/log_config.json for
    uvicorn."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(process),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_RENDER],
    )


class HandlerStreamLogger:
    """Where structlog sends the product's rendered lines: the stream of the root handler,
    written under that handler's lock."""

    def __init__(self, name: str, handler: logging.StreamHandler[Any]) -> None:
        self.name = name  # for structlog.stdlib.add_logger_name
        self._handler = handler

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line + "\n")
            if not getattr(stream, "line_buffering", False):  # stderr's newline flushes
                stream.flush()
        finally:
            handler.release()

    debug = info = warning = error = critical = exception = log = msg


def configure_logging(level: str = "INFO", *, process: str, stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (stderr); every line carries `process` (api, worker,
    scheduler)."""
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(json_formatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _FOREIGN_LOGGERS:
        foreign = logging.getLogger(name)
        foreign.handlers.clear()
        foreign.propagate = True

    def logger_factory(name: str = "", *_: Any) -> HandlerStreamLogger:
        return HandlerStreamLogger(name, handler)

    structlog.configure(
        processors=[
            *_shared_processors(process),
            structlog.processors.StackInfoRenderer(),
            *_RENDER,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )
    # pika narrates every connection at INFO; only its problems matter here.
    logging.getLogger("pika").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
