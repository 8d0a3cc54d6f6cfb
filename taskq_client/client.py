"""`TaskQueueClient`: the blocking client.

with TaskQueueClient("http://127.0.0.1:8000", api_key="...") as taskq:
    job_id = taskq.submit({"type": "send_email", "payload": {"to": "a@example.com"}}).job_id
    job = taskq.wait_for(job_id, timeout=60)
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from websockets.sync.client import connect

from taskq_client import calls
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
from taskq_client.transport import send

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def stream_url(base_url: str, filters: Mapping[str, Any]) -> str:
    """The WebSocket address of `/jobs/stream` with its filters (`job_id` repeatable)."""
    base = base_url.rstrip("/")
    scheme, rest = base.split("://", 1)
    ws = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    query = urlencode(
        [(k, v) for k, values in filters.items() for v in _as_list(values) if v is not None]
    )
    return f"{ws}://{rest}/jobs/stream" + (f"?{query}" if query else "")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple | set | frozenset) else [value]


class TaskQueueClient:
    """Blocking client for the Smart Task Queue API.

    Submissions carry an idempotency key generated per job unless one is given (turn it off
    with `auto_idempotency_keys=False`), so the retries on 503 and on dropped connections
    never store a job twice. Every API error raises a `TaskQueueError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        auto_idempotency_keys: bool = True,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = str(http.base_url) if http is not None else base_url
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self.auto_idempotency_keys = auto_idempotency_keys
        self._owns_http = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.http.headers.update(auth_headers(api_key))

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> TaskQueueClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: calls.Call[T]) -> T:
        return send(self.http, call, self.retry)

    def _ws_headers(self) -> dict[str, str]:
        key = self.http.headers.get("Authorization")
        return {"Authorization": key} if key else {}

    # --- submitting ----------------------------------------------------------------------

    def submit(self, job: Mapping[str, Any], *, idempotency_key: str | None = None) -> JobAccepted:
        """Submit one job (a `JobRequest`). `.created` is false when an earlier submission
        with the same job id or idempotency key and the same body is returned instead."""
        key = idempotency_key or job.get("idempotency_key")
        if key is None and self.auto_idempotency_keys:
            key = calls.new_idempotency_key()
        return self._send(calls.submit(job, key))

    def submit_batch(self, jobs: Sequence[Mapping[str, Any]]) -> list[JobAccepted]:
        """Submit jobs atomically; `depends_on` may name jobs of the batch in any order.
        Sent again after a lost answer, a batch already stored returns its jobs."""
        prepared = calls.prepare_batch(jobs, self.auto_idempotency_keys)
        return self._send(calls.submit_batch(prepared))

    # --- reading -------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        return self._send(calls.get_job(job_id))

    def list_jobs(self, **filters: Any) -> JobPage:
        """One page, newest first. Filters: status, type, priority, created_after,
        created_before, limit (at most 500), cursor (`next_cursor` of the previous page)."""
        return self._send(calls.list_jobs(**filters))

    def iter_jobs(self, *, page_size: int = 100, **filters: Any) -> Iterator[JobSummary]:
        """Every job matching the filters, newest first, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list_jobs(limit=page_size, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def logs(self, job_id: str) -> list[LogEntry]:
        return self._send(calls.logs(job_id))

    def stats(self) -> dict[str, Any]:
        return self._send(calls.stats())

    def job_types(self) -> list[dict[str, Any]]:
        return self._send(calls.job_types())

    # --- waiting -------------------------------------------------------------------------

    def wait_for(
        self,
        job_id: str,
        statuses: Collection[str] = TERMINAL_STATUSES,
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> Job:
        """Poll the job until its status is one of `statuses`; `WaitTimeout` after `timeout`."""
        return self.wait([job_id], statuses, timeout=timeout, interval=interval)[job_id]

    def wait(
        self,
        job_ids: Iterable[str],
        statuses: Collection[str] = TERMINAL_STATUSES,
        *,
        timeout: float = 60.0,
        interval: float = 0.2,
    ) -> dict[str, Job]:
        """Poll until every job's status is one of `statuses` (by default: terminal)."""
        deadline = time.monotonic() + timeout
        ids = list(dict.fromkeys(job_ids))
        done: dict[str, Job] = {}
        last: dict[str, Job] = {}
        while True:
            for job_id in ids:
                if job_id not in done:
                    job = last[job_id] = self.get_job(job_id)
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
            time.sleep(interval)

    # --- acting --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        return self._send(calls.cancel(job_id))

    def pause(self) -> SchedulerState:
        return self._send(calls.pause())

    def resume(self) -> SchedulerState:
        return self._send(calls.resume())

    # --- dead letters --------------------------------------------------------------------

    def dead_letters(self, *, limit: int = 50, cursor: int | str | None = None) -> DeadLetterPage:
        return self._send(calls.dead_letters(limit, cursor))

    def iter_dead_letters(self, *, page_size: int = 100) -> Iterator[DeadLetter]:
        cursor: int | str | None = None
        while True:
            page = self.dead_letters(limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def dead_letter(self, dead_letter_id: int) -> DeadLetter:
        return self._send(calls.dead_letter(dead_letter_id))

    def replay(self, dead_letter_id: int) -> DeadLetter:
        """Run the dead-lettered job again with a fresh attempt budget."""
        return self._send(calls.replay(dead_letter_id))

    def discard(self, dead_letter_id: int) -> None:
        self._send(calls.discard(dead_letter_id))

    # --- live events ---------------------------------------------------------------------

    def stream(
        self,
        *,
        job_ids: Sequence[str] = (),
        type: str | None = None,
        status: str | None = None,
        open_timeout: float = 10.0,
    ) -> Iterator[JobEvent]:
        """Live events from `WS /jobs/stream`, the first being `subscribed`. The key goes
        in the Authorization header. Stops when the server closes the connection."""
        url = stream_url(self.base_url, {"job_id": list(job_ids), "type": type, "status": status})
        with connect(
            url, additional_headers=self._ws_headers(), open_timeout=open_timeout
        ) as websocket:
            for message in websocket:
                yield JobEvent.model_validate_json(message)
