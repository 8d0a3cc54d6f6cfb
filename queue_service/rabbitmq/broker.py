"""The RabbitMQ broker: named durable priority queues and a named dead-letter exchange."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import dramatiq
import pika
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import iter_queue, xq_name
from dramatiq.worker import ConsumerThread

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
    # on delivery, settings.claim_on_delivery); it returns the claim's answer to come, and
    # the message waits for it (None: the message goes on at once). None: nothing happens.
    on_delivery: Callable[[MessageProxy], Future[Any] | None] | None = None
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
        any (`build_broker`). With publisher confirms on, it falls back to `enqueue`.
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
                            delivery_mode=2, priority=message.options.get("broker_priority")
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
    """Dramatiq's RabbitMQ consumer, with the claim on delivery (`on_delivery`).

    `on_delivery` starts each job message's claim and returns its answer to come. The
    message reaches Dramatiq's work queue only once that answer is in: the writer thread
    hands it over (`_hand_over`), so no worker thread takes a message and then waits for
    its claim (a wait and a wake-up per job, ~6 % of a worker's time in py-spy). A stopping
    worker gives `on_requeue` every message it did not run: those Dramatiq hands back, and
    those still held here or handed over after Dramatiq emptied its work queue.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Dramatiq's consumer thread creates its consumer: the thread whose work queue
        # takes the messages (None when something else consumes: messages are not held).
        thread = threading.current_thread()
        self._consumer_thread = thread if isinstance(thread, ConsumerThread) else None
        self._lock = threading.Lock()
        self._held: dict[int, MessageProxy] = {}  # by delivery tag
        self._given_back = False

    def __next__(self) -> MessageProxy | None:
        message: MessageProxy | None = super().__next__()
        if message is None or self.broker.on_delivery is None:
            return message
        answer = self.broker.on_delivery(message)
        if answer is None or self._consumer_thread is None:
            return message
        with self._lock:
            self._held[message._tag] = message
        answer.add_done_callback(lambda _: self._hand_over(message))
        return None  # for now: Dramatiq takes it as "nothing delivered yet"

    def _hand_over(self, message: MessageProxy) -> None:
        """Its claim is answered (on the writer thread; here, when it already was)."""
        assert self._consumer_thread is not None
        with self._lock:
            if self._given_back or self._held.pop(message._tag, None) is None:
                return
            if not self._consumer_thread.running:  # stopping: it waits to be given back
                self._held[message._tag] = message
                return
            self._consumer_thread.handle_message(message)

    def requeue(self, messages: Any) -> None:
        self._give_back(list(messages))

    def close(self) -> None:
        self._give_back([])  # what no requeue took (Dramatiq's was empty) or came late
        super().close()

    def _give_back(self, messages: list[MessageProxy]) -> None:
        thread = self._consumer_thread
        with self._lock:
            stopping = thread is None or not thread.running
            if stopping and not self._given_back:
                self._given_back = True
                messages += self._held.values()
                self._held.clear()
                if thread is not None:  # handed over after Dramatiq emptied its queue
                    messages += [item.message for item in iter_queue(thread.work_queue)]
        if messages and self.broker.on_requeue is not None:
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
