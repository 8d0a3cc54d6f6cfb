"""Log lines: one JSON object each, job context bound, secrets masked, ours and the
libraries' alike."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from queue_service.logging import attempt_context, configure_logging, get_logger, redact


@pytest.fixture
def stderr() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_our_lines_are_json_with_the_common_fields_and_the_bound_attempt(
    stderr: io.StringIO,
) -> None:
    configure_logging("INFO", process="worker", stream=stderr)
    log = get_logger("tests.logging")
    with attempt_context("job_1", 2):
        log.info("attempt_finished", result="succeeded")
        logging.getLogger("acme.ledger").warning("slow ledger")  # a library's line
    log.info("after_the_attempt")
    log.debug("not_shown")

    line, library, after = lines(stderr)
    assert line["event"] == "attempt_finished"
    assert line["level"] == "info"
    assert line["logger"] == "tests.logging"
    assert line["process"] == "worker"
    assert (line["job_id"], line["attempt"], line["result"]) == ("job_1", 2, "succeeded")
    assert {"timestamp", "pid"} <= line.keys()
    assert (library["event"], library["job_id"], library["attempt"]) == ("slow ledger", "job_1", 2)
    assert "job_id" not in after and "attempt" not in after


def test_a_handlers_own_bound_context_and_odd_values_are_rendered(stderr: io.StringIO) -> None:
    configure_logging("INFO", process="worker", stream=stderr)

    class Account:
        def __repr__(self) -> str:
            return "<Account 42>"

    with structlog.contextvars.bound_contextvars(tenant="acme"):
        get_logger("tests.logging").info("charged", account=Account(), amount=12.5)

    [line] = lines(stderr)
    assert (line["tenant"], line["account"], line["amount"]) == ("acme", "<Account 42>", 12.5)


def test_secrets_are_masked_in_our_lines_and_in_library_lines(stderr: io.StringIO) -> None:
    configure_logging("INFO", process="api", stream=stderr)
    get_logger("tests.logging").warning(
        "broker_down", url="amqp://guest:s3cret@127.0.0.1:5672/%2F", header="Bearer abc.def"
    )
    logging.getLogger("dramatiq.test").warning("connecting to amqp://user:pw@host/ failed")

    text = stderr.getvalue()
    assert "s3cret" not in text and "abc.def" not in text and ":pw@" not in text
    ours, library = lines(stderr)
    assert ours["url"] == "amqp://guest:***@127.0.0.1:5672/%2F"
    assert ours["header"] == "Bearer ***"
    assert library["event"] == "connecting to amqp://user:***@host/ failed"
    assert library["logger"] == "dramatiq.test"


def test_an_exception_is_rendered_into_the_line(stderr: io.StringIO) -> None:
    configure_logging("INFO", process="worker", stream=stderr)
    try:
        raise ValueError("boom")
    except ValueError:
        get_logger("tests.logging").exception("flush_failed")
    [line] = lines(stderr)
    assert line["level"] == "error"
    assert "ValueError: boom" in str(line["exception"])


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        ("authorization: bearer tok123", "authorization: bearer ***"),
        ("AUTHORIZATION: BEARER TOK", "AUTHORIZATION: BEARER ***"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact(text: str, masked: str) -> None:
    assert redact(text) == masked
