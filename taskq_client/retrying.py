"""When a request is sent again, and after how long: pure decisions shared by both clients.

A 503 (the API cannot reach PostgreSQL or RabbitMQ) and a request that never reached the
API are always retried; a request whose answer was lost (the connection dropped after it
was sent) only when the call is idempotent: reads, pause/resume, and submissions, which
carry a job id or an idempotency key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

# The request never left: nothing can have happened on the server.
_UNSENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `Retry-After` wins when the API sends it."""

    attempts: int = 6
    initial_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 5.0
    max_retry_after: float = 30.0

    def delay(self, retry: int, retry_after: str | None = None, rand: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_retry_after)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        ceiling = min(self.initial_delay * self.multiplier ** (retry - 1), self.max_delay)
        return ceiling * (random.random() if rand is None else rand)


def should_retry_error(error: httpx.TransportError, idempotent: bool) -> bool:
    return isinstance(error, _UNSENT) or idempotent


def should_retry_response(response: httpx.Response) -> bool:
    return response.status_code == 503
