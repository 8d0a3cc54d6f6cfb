"""`AsyncTaskQueueClient`: the asyncio twin of `TaskQueueClient`, method for method.

async with AsyncTaskQueueClient(url, api_key=key) as taskq:
    accepted = await taskq.submit({"type": "data_export"})
    async for event in taskq.stream(job_ids=[accepted.job_id]):
        ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from websockets.asyncio.client import connect

from taskq_client import calls
from taskq_client.client import DEFAULT_URL, auth_headers, stream_url
from taskq_client.errors import WaitTimeout
from taskq_client.models import (
    TERMINAL_STATUSES,
    DeadLetter,
    DeadLetterPage,
    Job,
    JobAccepted,
    JobEvent,
    JobPage,
    JobSummary,
    LogEntry,
    SchedulerState,
)
from taskq_client.retrying import RetryPolicy
from taskq_client.transport import send_async

T = TypeVar("T")


class AsyncTaskQueueClient:
    """Asyncio client; see `TaskQueueClient` for the behaviour of each method."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        auto_idempotency_keys: bool = True,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = str(http.base_url) if http is not None else base_url
        self.retry = retry or RetryPolicy()
        self.auto_idempotency_keys = auto_idempotency_keys
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.http.headers.update(auth_headers(api_key))

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncTaskQueueClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        return await send_async(self.http, call, self.retry)

    async def submit(
        self, job: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> JobAccepted:
        key = idempotency_key or job.get("idempotency_key")
        if key is None and self.auto_idempotency_keys:
            key = calls.new_idempotency_key()
        return await self._send(calls.submit(job, key))

    async def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[JobAccepted]:
        prepared = calls.prepare_batch(jobs, self.auto_idempotency_keys)
        return await self._send(calls.submit_batch(prepared))

    async def get_job(self, job_id: str) -> Job:
        return await self._send(calls.get_job(job_id))

    async def list_jobs(self, **filters: Any) -> JobPage:
        return await self._send(calls.list_jobs(**filters))

    async def iter_jobs(self, *, page_size: int = 100, **filters: Any) -> AsyncIterator[JobSummary]:
        cursor: str | None = None
        while True:
            page = await self.list_jobs(limit=page_size, cursor=cursor, **filters)
            for item in page.items:
                yield item
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def logs(self, job_id: str) -> list[LogEntry]:
        return await self._send(calls.logs(job_id))

    async def stats(self) -> dict[str, Any]:
        return await self._send(calls.stats())

    async def job_types(self) -> list[dict[str, Any]]:
        return await self._send(calls.job_types())

    async def wait_for(
        self,
        job_id: str,
        statuses: Collection[str] = TERMINAL_STATUSES,
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> Job:
        return (await self.wait([job_id], statuses, timeout=timeout, interval=interval))[job_id]

    async def wait(
        self,
        job_ids: Iterable[str],
        statuses: Collection[str] = TERMINAL_STATUSES,
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> dict[str, Job]:
        deadline = time.monotonic() + timeout
        ids = list(dict.fromkeys(job_ids))
        done: dict[str, Job] = {}
        last: dict[str, Job] = {}
        while True:
            for job_id in ids:
                if job_id not in done:
                    job = last[job_id] = await self.get_job(job_id)
                    if job.status in statuses:
                        done[job_id] = job
            if len(done) == len(ids):
                return {job_id: done[job_id] for job_id in ids}
            if time.monotonic() >= deadline:
                waiting = {i: last[i].status for i in ids if i not in done}
                raise WaitTimeout(
                    f"timed out after {timeout} s waiting for {sorted(statuses)}: {waiting}",
                    {**last, **done},
                )
            await asyncio.sleep(interval)

    async def cancel(self, job_id: str) -> Job:
        return await self._send(calls.cancel(job_id))

    async def pause(self) -> SchedulerState:
        return await self._send(calls.pause())

    async def resume(self) -> SchedulerState:
        return await self._send(calls.resume())

    async def dead_letters(
        self, *, limit: int = 50, cursor: int | str | None = None
    ) -> DeadLetterPage:
        return await self._send(calls.dead_letters(limit, cursor))

    async def dead_letter(self, dead_letter_id: int) -> DeadLetter:
        return await self._send(calls.dead_letter(dead_letter_id))

    async def replay(self, dead_letter_id: int) -> DeadLetter:
        return await self._send(calls.replay(dead_letter_id))

    async def discard(self, dead_letter_id: int) -> None:
        await self._send(calls.discard(dead_letter_id))

    async def stream(
        self,
        *,
        job_ids: Sequence[str] = (),
        type: str | None = None,
        status: str | None = None,
        open_timeout: float = 10.0,
    ) -> AsyncIterator[JobEvent]:
        url = stream_url(self.base_url, {"job_id": list(job_ids), "type": type, "status": status})
        key = self.http.headers.get("Authorization")
        headers = {"Authorization": key} if key else {}
        async with connect(url, additional_headers=headers, open_timeout=open_timeout) as ws:
            async for message in ws:
                yield JobEvent.model_validate_json(message)
