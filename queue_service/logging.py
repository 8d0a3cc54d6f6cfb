"""Structured JSON logs (structlog) with stable event names and bound job context.

One format for every line a process writes: the product's own structlog events and the
stdlib records of uvicorn, Dramatiq, pika and alembic all go through one stdlib handler
whose structlog `ProcessorFormatter` renders JSON with the same fields: `event`, `level`,
`timestamp` (ISO-8601, UTC), `logger`, `process` (api, worker, scheduler), `pid`, and
`job_id` / `attempt` where the line belongs to an attempt.

Secrets never reach a log line: passwords in URLs (`amqp://user:secret@host`) and bearer
tokens are masked in every rendered value, whichever code logged them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

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
    text = _URL_PASSWORD.sub(r"\g<prefix>:***@", text)
    return _BEARER.sub(r"\g<prefix>***", text)


def _redact_values(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in event_dict.items()}


def json_formatter(process: str = "api") -> logging.Formatter:
    """The formatter of every line; also named by api/log_config.json for uvicorn."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(process),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_values,
            structlog.processors.JSONRenderer(),
        ],
    )


def configure_logging(level: str = "INFO", *, process: str) -> None:
    """JSON lines on stderr; every line carries `process` (api, worker, scheduler)."""
    numeric = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
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
    structlog.configure(
        processors=[
            *_shared_processors(process),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    # pika narrates every connection at INFO; only its problems matter here.
    logging.getLogger("pika").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
