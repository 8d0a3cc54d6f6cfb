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

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

# Libraries whose loggers may carry handlers of their own (uvicorn's log config, the
# dramatiq CLI): their records must reach the one root handler instead.
_FOREIGN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq", "periodiq")


def _process_fields(process: str) -> Processor:
    def add(_: Any, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("process", process)
        event_dict["pid"] = os.getpid()
        return event_dict

    return add


def _shared_processors(process: str) -> list[Processor]:
    return [
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
    return {k: redact(v) if isinstance(v, str) else v for k, v in event_dict.items()}


# The last steps of every line, ours and the libraries'.
_RENDER: list[Processor] = [
    structlog.processors.format_exc_info,
    _redact_values,
    structlog.processors.JSONRenderer(),
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
            handler.stream.write(line + "\n")
            handler.stream.flush()
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
