"""Readiness: can this process open a connection to RabbitMQ right now?"""

from __future__ import annotations

import pika

from queue_service.rabbitmq.broker import connection_parameters


def broker_status(broker_url: str) -> str:
    """`ok`, or `unreachable: <error type>` after one quick connection attempt."""
    try:
        params = connection_parameters(broker_url, "taskq-api readiness")
        params.update(connection_attempts=1, socket_timeout=2, blocked_connection_timeout=2)
        pika.BlockingConnection(pika.ConnectionParameters(**params)).close()
        return "ok"
    except Exception as error:
        return f"unreachable: {type(error).__name__}"
