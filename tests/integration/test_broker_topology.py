"""The broker's RabbitMQ topology, declared on a pristine node started for this test by
pytest-rabbitmq (`rabbitmq_proc`): nothing was declared there before the broker ran."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from pytest_rabbitmq.factories.executor import RabbitMqExecutor

from queue_service import names
from queue_service.model import Admitted, Priority
from queue_service.rabbitmq.broker import (
    JOB_MESSAGE_DELIVERY_MODE,
    TaskQueueBroker,
    build_broker,
)
from queue_service.rabbitmq.publishing import publish_admitted
from queue_service.settings import Settings


@pytest.fixture(scope="session")
def pristine_node_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Environment of the node `rabbitmq_proc` starts: not the system node's files.

    /etc/rabbitmq's rabbitmq.conf pins a listener to 5672 and rabbitmq-env.conf names the
    system node, so the test node gets empty ones of its own; it listens on 127.0.0.1 only.
    Requested before `rabbitmq_proc`, so that the node starts with it.
    """
    base = tmp_path_factory.mktemp("pristine-rabbitmq")
    (base / "rabbitmq.conf").write_text("")
    (base / "rabbitmq-env.conf").write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RABBITMQ_CONFIG_FILE", str(base / "rabbitmq.conf"))
        patch.setenv("RABBITMQ_CONF_ENV_FILE", str(base / "rabbitmq-env.conf"))
        patch.setenv("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        patch.setenv(
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}"
        )
        yield base


@pytest.fixture
def pristine_node(pristine_node_env: Path, rabbitmq_proc: RabbitMqExecutor) -> RabbitMqExecutor:
    return rabbitmq_proc


def connect(node: RabbitMqExecutor) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            host="127.0.0.1", port=node.port, credentials=pika.PlainCredentials("guest", "guest")
        )
    )


@pytest.fixture
def pristine_broker(pristine_node: RabbitMqExecutor) -> Iterator[TaskQueueBroker]:
    """The product's broker on the pristine node; what it declared is deleted afterwards."""
    settings = Settings(broker_url=f"amqp://guest:guest@127.0.0.1:{pristine_node.port}/%2F")
    broker = build_broker(settings, connection_name="taskq-tests topology")
    yield broker
    broker.close()
    connection = connect(pristine_node)
    try:
        channel = connection.channel()
        for queue in (names.JOBS_QUEUE, f"{names.JOBS_QUEUE}.DQ", names.DEAD_LETTER_QUEUE):
            channel.queue_delete(queue)
        channel.exchange_delete(names.DEAD_LETTER_EXCHANGE)
    finally:
        connection.close()


def queue_arguments(node: RabbitMqExecutor) -> dict[str, dict[str, Any]]:
    """Durability and arguments of every queue on the node, by name (one rabbitmqctl call)."""
    output = node.rabbitctl_output(
        "list_queues", "name", "durable", "arguments", "-s", "--formatter", "json"
    )
    return {
        q["name"]: {"durable": q["durable"], **{key: value for key, _, value in q["arguments"]}}
        for q in json.loads(output)
    }


def exists(node: RabbitMqExecutor, declare: Callable[[BlockingChannel], Any]) -> bool:
    """Whether a passive (or equivalent) declaration succeeds; 404/406 close the channel."""
    connection = connect(node)
    try:
        declare(connection.channel())
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code in (404, 406), error
        return False
    finally:
        connection.close()


def test_broker_declares_priority_queue_with_named_dead_letter_exchange(
    pristine_node: RabbitMqExecutor, pristine_broker: TaskQueueBroker
) -> None:
    # Given a pristine node: neither the jobs queue nor the dead-letter exchange exists
    assert not exists(pristine_node, lambda c: c.queue_declare(names.JOBS_QUEUE, passive=True))
    assert not exists(
        pristine_node, lambda c: c.exchange_declare(names.DEAD_LETTER_EXCHANGE, passive=True)
    )

    # When the broker declares the jobs queue, as the first publish or worker does
    pristine_broker.declare_queue(names.JOBS_QUEUE, ensure=True)

    # Then taskq.jobs is a durable priority queue dead-lettering to the named exchange
    queues = queue_arguments(pristine_node)
    assert queues[names.JOBS_QUEUE]["durable"] is True
    assert queues[names.JOBS_QUEUE]["x-max-priority"] == names.MAX_MESSAGE_PRIORITY
    assert queues[names.JOBS_QUEUE]["x-dead-letter-exchange"] == names.DEAD_LETTER_EXCHANGE
    # and the dead-letter queue is durable, and Dramatiq's per-queue .XQ is not used
    assert queues[names.DEAD_LETTER_QUEUE]["durable"] is True
    assert f"{names.JOBS_QUEUE}.XQ" not in queues
    # and the dead-letter exchange is a durable fanout (an inequivalent declaration is refused)
    assert exists(
        pristine_node,
        lambda c: c.exchange_declare(names.DEAD_LETTER_EXCHANGE, "fanout", durable=True),
    )
    assert not exists(
        pristine_node,
        lambda c: c.exchange_declare(names.DEAD_LETTER_EXCHANGE, "direct", durable=True),
    )


def test_a_rejected_job_message_lands_in_the_dead_letter_queue(
    pristine_node: RabbitMqExecutor, pristine_broker: TaskQueueBroker
) -> None:
    # Given a job message published by the broker
    publish_admitted(pristine_broker, [Admitted("settle_batch_9", 3, Priority.HIGH)])
    connection = connect(pristine_node)
    try:
        channel = connection.channel()
        method, properties, _ = channel.basic_get(names.JOBS_QUEUE)
        assert method is not None
        assert properties.priority == Priority.HIGH.message_priority

        # When a consumer rejects it without requeueing (what Dramatiq's message.fail() does)
        channel.basic_nack(method.delivery_tag, requeue=False)

        # Then it is in taskq.dead-letters, with RabbitMQ's x-death naming why and whence
        dead = None
        for _ in range(50):  # dead-lettering is asynchronous; bounded wait
            dead = channel.basic_get(names.DEAD_LETTER_QUEUE, auto_ack=True)
            if dead[0] is not None:
                break
            connection.sleep(0.1)
        assert dead is not None and dead[0] is not None
        _, dead_properties, body = dead
        death = dead_properties.headers["x-death"][0]
        assert (death["reason"], death["queue"]) == ("rejected", names.JOBS_QUEUE)
        assert json.loads(body)["args"] == ["settle_batch_9", 3]
        assert channel.queue_declare(names.JOBS_QUEUE, passive=True).method.message_count == 0
    finally:
        connection.close()


def test_admitted_attempts_go_out_in_order_and_survive_a_lost_connection(
    pristine_node: RabbitMqExecutor, pristine_broker: TaskQueueBroker
) -> None:
    # Given attempts admitted in rank order (one flush's worth, published in one write)
    first = [Admitted(f"ledger_{n}", 1, Priority.NORMAL) for n in range(3)]
    assert publish_admitted(pristine_broker, first) == 3

    # When the publishing thread's connection is lost before the next batch
    pristine_broker.connection.close()
    assert publish_admitted(pristine_broker, [Admitted("ledger_3", 2, Priority.NORMAL)]) == 1

    # Then all four are on the queue in publication order: transient job messages (the
    # admitted attempts live in PostgreSQL) that a Dramatiq worker decodes, with the
    # priority RabbitMQ orders them by
    connection = connect(pristine_node)
    try:
        channel = connection.channel()
        received = []
        for _ in range(4):
            method, properties, body = channel.basic_get(names.JOBS_QUEUE, auto_ack=True)
            assert method is not None
            assert (properties.delivery_mode, properties.priority) == (
                JOB_MESSAGE_DELIVERY_MODE,
                Priority.NORMAL.message_priority,
            )
            message = dramatiq.Message.decode(body)
            assert (message.queue_name, message.actor_name) == (
                names.JOBS_QUEUE,
                names.RUN_JOB_ACTOR,
            )
            received.append(tuple(message.args))
        assert received == [("ledger_0", 1), ("ledger_1", 1), ("ledger_2", 1), ("ledger_3", 2)]
    finally:
        connection.close()


def test_acks_from_many_threads_all_reach_rabbitmq(
    pristine_node: RabbitMqExecutor, pristine_broker: TaskQueueBroker
) -> None:
    # Given 40 job messages delivered to the broker's consumer, none acknowledged yet
    total = 40
    publish_admitted(pristine_broker, [Admitted(f"fx_{n}", 1, Priority.LOW) for n in range(total)])
    consumer = pristine_broker.consume(names.JOBS_QUEUE, prefetch=total, timeout=100)
    try:
        delivered = []
        for _ in range(200):  # bounded: deliveries arrive over a few polls
            message = next(consumer)
            if message is not None:
                delivered.append(message)
            if len(delivered) == total:
                break
        assert len(delivered) == total

        # When four worker threads acknowledge them at once (batched on the consumer thread)
        def ack_share(share: list[Any]) -> None:
            for message in share:
                consumer.ack(message)

        threads = [threading.Thread(target=ack_share, args=(delivered[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for _ in range(5):  # the consumer thread's polls send what was handed over
            assert next(consumer) is None
    finally:
        # and the consumer goes away, as a worker that stops does
        consumer.close()

    # Then every ack reached RabbitMQ: nothing is redelivered to anyone
    connection = connect(pristine_node)
    try:
        channel = connection.channel()
        assert channel.queue_declare(names.JOBS_QUEUE, passive=True).method.message_count == 0
    finally:
        connection.close()
