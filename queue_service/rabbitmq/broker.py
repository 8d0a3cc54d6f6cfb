"""The RabbitMQ broker: named durable priority queues and a named dead-letter exchange."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
import pika
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import xq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import MiddlewareError

from queue_service import names
from queue_service.settings import Settings

# Job messages are transient (AMQP delivery mode 1): RabbitMQ keeps them in memory and
# writes none to disk. PostgreSQL holds every admitted attempt (its lease), and maintenance
# publishes again an attempt no worker claimed within `republish_after_seconds`, so a
# message lost with a broker restart delays its job and loses nothing. Persistent, each
# message went through RabbitMQ's message store: about 40 % of its CPU per no-op job
# (evaluation_results.md, "Twelfth round"). At most the token pool's capacity of them
# wait in the queue at once. Dead letters published by maintenance stay persistent.
JOB_MESSAGE_DELIVERY_MODE = 1


class TaskQueueBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, but dead messages go to `taskq.dead-letter`.

    Dramatiq routes rejected messages to a per-queue `<queue>.XQ` through the default
    exchange, where they expire after a week. We route them instead to one named
    exchange whose durable queue keeps them (with RabbitMQ's x-death headers) for
    operators and for GET /dead-letters.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The hooks each signal calls, by signal name (`_hooks`); reset as middleware is added.
        self._hooks_by_signal: dict[str, list[tuple[dramatiq.Middleware, Any]]] = {}
        super().__init__(*args, **kwargs)

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": names.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": xq_name(queue_name),
        }
        if self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        return arguments

    # Called on the consumer thread with each message as it is delivered (a worker's claim
    # on delivery, settings.claim_on_delivery); None: nothing happens at delivery.
    on_delivery: Callable[[MessageProxy], None] | None = None
    # Called with the messages a stopping worker hands back to RabbitMQ, before it does
    # (claims made on delivery are withdrawn); None: nothing happens first.
    on_requeue: Callable[[list[MessageProxy]], None] | None = None

    def publish_many(self, messages: Sequence[dramatiq.Message[Any]]) -> None:
        """Publish `messages`, in order, in one socket write; a lost connection is replaced
        and the whole write tried once more (as Dramatiq's `enqueue` does per message).

        Dramatiq's `enqueue` writes each message and then polls the connection until it
        is out: three system calls and a pass through pika's I/O loop per message, which
        was the most of a worker's publishing time. Here pika's channel implementation
        queues every frame first, then one flush (what `basic_publish` runs after each
        message) sends them. No enqueue middleware runs: none of the product's stacks has
        any (`build_broker`). With publisher confirms on, it falls back to `enqueue` (Dramatiq's,
        persistent messages).
        """
        if self.confirm_delivery:
            for message in messages:
                self.enqueue(message)
            return
        for attempt in (1, 2):
            try:
                for queue_name in sorted({message.queue_name for message in messages}):
                    self.declare_queue(queue_name, ensure=True)
                channel = self.channel
                frames = channel._impl  # pika's channel: queues frames, does no I/O
                for message in messages:
                    frames.basic_publish(
                        exchange="",
                        routing_key=message.queue_name,
                        body=message.encode(),
                        properties=pika.BasicProperties(
                            delivery_mode=JOB_MESSAGE_DELIVERY_MODE,
                            priority=message.options.get("broker_priority"),
                        ),
                    )
                channel._flush_output()
                return
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
                del self.connection  # the next try (or the next caller) opens a new one
                if attempt == 2:
                    raise

    @property
    def consumer_class(self) -> Any:
        return _Consumer

    # Dramatiq's emit_before/emit_after call the hook of every middleware for every signal,
    # most of them the base class's no-op: four signals a message, seven middleware. These
    # call only the hooks a middleware defines, with the same order and error handling.

    def add_middleware(self, middleware: dramatiq.Middleware, **where: Any) -> None:
        super().add_middleware(middleware, **where)
        self._hooks_by_signal = {}

    def _hooks(self, signal: str) -> list[tuple[dramatiq.Middleware, Any]]:
        hooks = self._hooks_by_signal.get(signal)
        if hooks is None:
            no_op = getattr(dramatiq.Middleware, signal, None)
            hooks = [
                (middleware, getattr(middleware, signal))
                for middleware in self.middleware
                if signal in getattr(middleware, "__dict__", {})
                or getattr(type(middleware), signal, None) is not no_op
            ]
            self._hooks_by_signal[signal] = hooks
        return hooks

    def emit_before(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in self._hooks("before_" + signal):
            try:
                hook(self, *args, **kwargs)
            except MiddlewareError:
                raise
            except Exception:
                self.logger.critical(
                    "Unexpected failure in before_%s of %r.", signal, middleware, exc_info=True
                )

    def emit_after(self, signal: str, *args: Any, **kwargs: Any) -> None:
        for middleware, hook in reversed(self._hooks("after_" + signal)):
            try:
                hook(self, *args, **kwargs)
            except Exception:
                self.logger.critical(
                    "Unexpected failure in after_%s of %r.", signal, middleware, exc_info=True
                )

    def _declare_xq_queue(self, queue_name: str) -> Any:
        channel = self.channel
        channel.exchange_declare(
            exchange=names.DEAD_LETTER_EXCHANGE, exchange_type="fanout", durable=True
        )
        result = channel.queue_declare(queue=names.DEAD_LETTER_QUEUE, durable=True)
        channel.queue_bind(queue=names.DEAD_LETTER_QUEUE, exchange=names.DEAD_LETTER_EXCHANGE)
        return result


class _Consumer(_RabbitmqConsumer):  # type: ignore[misc]  # Dramatiq's, untyped
    """Dramatiq's RabbitMQ consumer, handing each delivered message to `on_delivery`, and
    the messages a stopping worker gives back to `on_requeue` before they go. Its acks are
    sent in batches (`ack`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acks_lock = threading.Lock()
        self._acks: list[int] = []  # delivery tags acked by worker threads, not yet sent

    def ack(self, message: MessageProxy) -> None:
        """Send the message's ack from the consumer thread (pika is not thread-safe), with
        whatever other acks are waiting by then: one hand-over to that thread and one write
        for all of them. Dramatiq hands each ack over on its own (a wake-up of the consumer
        thread, a write and a pass of pika's I/O loop per message)."""
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            self.logger.warning("Failed to ack message: not in known tags.")
            return
        with self._acks_lock:
            self._acks.append(message._tag)
            if len(self._acks) > 1:
                return  # the hand-over already on its way sends this one too
        try:
            self.connection.add_callback_threadsafe(self._send_acks)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
            raise ConnectionClosed(e) from None

    def _send_acks(self) -> None:
        """On the consumer thread: every waiting ack, then one flush of the socket."""
        with self._acks_lock:
            tags, self._acks = self._acks, []
        frames = self.channel._impl  # pika's channel: queues frames, does no I/O
        for tag in tags:
            frames.basic_ack(tag)
        self.channel._flush_output()

    def __next__(self) -> MessageProxy | None:
        message: MessageProxy | None = super().__next__()
        if message is not None and self.broker.on_delivery is not None:
            self.broker.on_delivery(message)
        return message

    def requeue(self, messages: Any) -> None:
        messages = list(messages)
        if self.broker.on_requeue is not None:
            self.broker.on_requeue(messages)
        super().requeue(messages)


def process_name(role: str) -> str:
    """`taskq-<role> host:pid`: names this process's RabbitMQ connection and its leases."""
    return f"taskq-{role} {socket.gethostname()}:{os.getpid()}"


def connection_parameters(url: str, connection_name: str) -> dict[str, Any]:
    """pika parameters for `url`, named so the management console tells processes apart."""
    parsed = pika.URLParameters(url)
    return {
        "host": parsed.host,
        "port": parsed.port,
        "virtual_host": parsed.virtual_host,
        "credentials": parsed.credentials,
        "heartbeat": 60,
        "blocked_connection_timeout": 30,
        "client_properties": {"connection_name": connection_name},
    }


def build_broker(
    settings: Settings,
    connection_name: str,
    middleware: list[dramatiq.Middleware] | None = None,
) -> TaskQueueBroker:
    """The broker for one process, installed as Dramatiq's global broker.

    `middleware` defaults to none at all: publishers need none, and workers pass theirs.
    """
    broker = TaskQueueBroker(
        parameters=[connection_parameters(settings.broker_url, connection_name)],
        max_priority=names.MAX_MESSAGE_PRIORITY,
        middleware=middleware or [],
    )
    dramatiq.set_broker(broker)
    return broker
