"""Sending a `Call` with retries, blocking and asyncio."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import httpx

from taskq_client.calls import Call
from taskq_client.errors import ConnectionFailed
from taskq_client.retrying import RetryPolicy, should_retry_error, should_retry_response

T = TypeVar("T")


def _request(http: httpx.Client | httpx.AsyncClient, call: Call[T]) -> httpx.Request:
    return http.build_request(
        call.method, call.path, params=call.params, json=call.json, headers=dict(call.headers)
    )


def send(http: httpx.Client, call: Call[T], policy: RetryPolicy) -> T:
    for attempt in range(1, policy.attempts + 1):
        last = attempt == policy.attempts
        try:
            response = http.send(_request(http, call))
        except httpx.TransportError as error:
            if last or not should_retry_error(error, call.idempotent):
                raise ConnectionFailed(f"{call.method} {call.path}: {error!r}") from error
            time.sleep(policy.delay(attempt))
            continue
        if not last and should_retry_response(response):
            time.sleep(policy.delay(attempt, response.headers.get("retry-after")))
            continue
        return call.read(response)
    raise AssertionError("unreachable")


async def send_async(http: httpx.AsyncClient, call: Call[T], policy: RetryPolicy) -> T:
    for attempt in range(1, policy.attempts + 1):
        last = attempt == policy.attempts
        try:
            response = await http.send(_request(http, call))
        except httpx.TransportError as error:
            if last or not should_retry_error(error, call.idempotent):
                raise ConnectionFailed(f"{call.method} {call.path}: {error!r}") from error
            await asyncio.sleep(policy.delay(attempt))
            continue
        if not last and should_retry_response(response):
            await asyncio.sleep(policy.delay(attempt, response.headers.get("retry-after")))
            continue
        return call.read(response)
    raise AssertionError("unreachable")
