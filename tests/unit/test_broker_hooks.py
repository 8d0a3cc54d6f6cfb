"""The broker's middleware dispatch: only the hooks a middleware defines, in Dramatiq's order
and with its error handling. The broker is never connected (pika connects on first use)."""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import SkipMessage

from queue_service.rabbitmq.broker import TaskQueueBroker

calls: list[str] = []


class Claims(dramatiq.Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        calls.append("claims.before")

    def after_process_message(self, broker: Any, message: Any, **outcome: Any) -> None:
        calls.append("claims.after")


class Quiet(dramatiq.Middleware):
    """Defines no hook: never called."""


class Tokens(dramatiq.Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        calls.append("tokens.before")

    def after_process_message(self, broker: Any, message: Any, **outcome: Any) -> None:
        calls.append("tokens.after")


class Broken(dramatiq.Middleware):
    def after_process_message(self, broker: Any, message: Any, **outcome: Any) -> None:
        raise RuntimeError("a bug in a middleware")


class Skips(dramatiq.Middleware):
    def before_process_message(self, broker: Any, message: Any) -> None:
        raise SkipMessage()


def broker(*middleware: dramatiq.Middleware) -> TaskQueueBroker:
    calls.clear()
    return TaskQueueBroker(url="amqp://guest:guest@127.0.0.1:1/", middleware=list(middleware))


def test_hooks_run_in_dramatiq_order_and_only_where_defined() -> None:
    b = broker(Claims(), Quiet(), Tokens())
    b.emit_before("process_message", None)
    b.emit_after("process_message", None, result=None)
    assert calls == ["claims.before", "tokens.before", "tokens.after", "claims.after"]
    assert [type(m) for m, _ in b._hooks("before_process_message")] == [Claims, Tokens]


def test_a_failing_after_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = broker(Claims(), Broken(), Tokens())
    b.emit_after("process_message", None, result=None)
    assert calls == ["tokens.after", "claims.after"]
    assert "Unexpected failure in after_process_message" in caplog.text


def test_a_middleware_error_in_a_before_hook_propagates() -> None:
    b = broker(Skips(), Tokens())
    with pytest.raises(SkipMessage):
        b.emit_before("process_message", None)
    assert calls == []


def test_middleware_added_later_is_called() -> None:
    b = broker(Claims())
    b.emit_before("process_message", None)
    b.add_middleware(Tokens())
    b.emit_before("process_message", None)
    assert calls == ["claims.before", "claims.before", "tokens.before"]
