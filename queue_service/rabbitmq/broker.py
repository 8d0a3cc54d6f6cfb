"""The RabbitMQ broker: named durable priority queues and a named dead-letter exchange."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import dramatiq
import pika
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import xq_name

from queue_service import names
from queue_service.settings import Settings


class TaskQueueBroker(RabbitmqBroker):
    """Dramatiq's RabbitMQ broker, but dead messages go to `taskq.dead-letter`.

    Dramatiq routes rejected messages to a per-queue `<queue>.XQ` through the default
    exchange, where they expire after a week. We route them instead to one named
    exchange whose durable queue keeps them (with RabbitMQ's x-death headers) for
    operators and for GET /dead-letters.
    """

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

    @property
    def consumer_class(self) -> Any:
        return _Consumer if self.on_delivery is not None else _RabbitmqConsumer

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
    the messages a stopping worker gives back to `on_requeue` before they go."""

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
