"""Every API call as data: method, path, body, and how to read the answer.

The sync and async clients send the same `Call`s; only the sending differs.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter

from taskq_client.errors import api_error
from taskq_client.models import (
    DeadLetter,
    DeadLetterPage,
    Job,
    JobAccepted,
    JobPage,
    LogEntry,
    SchedulerState,
)

T = TypeVar("T")
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request. `idempotent`: safe to send again when the answer was lost (a request
    never sent, or answered 503, is always retried)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def new_job_id() -> str:
    """A job id in the API's own format (`job_` + 26 characters)."""
    return "job_" + "".join(secrets.choice(_ALPHABET) for _ in range(26))


def checked(response: httpx.Response) -> httpx.Response:
    """The response when its status is a success, else the API's error raised."""
    if response.is_success:
        return response
    try:
        body = response.json()
    except ValueError:
        body = None
    raise api_error(response.status_code, body, response.text)


def _model(adapter: TypeAdapter[T]) -> Callable[[httpx.Response], T]:
    return lambda response: adapter.validate_python(checked(response).json())


_JOB = TypeAdapter(Job)
_ACCEPTED = TypeAdapter(JobAccepted)
_ACCEPTED_LIST = TypeAdapter(list[JobAccepted])
_PAGE = TypeAdapter(JobPage)
_LOGS = TypeAdapter(list[LogEntry])
_DEAD = TypeAdapter(DeadLetter)
_DEAD_PAGE = TypeAdapter(DeadLetterPage)
_SCHEDULER = TypeAdapter(SchedulerState)


def _accepted(response: httpx.Response) -> JobAccepted:
    accepted = _ACCEPTED.validate_python(checked(response).json())
    accepted.created = response.status_code == 201
    return accepted


def submit(job: Mapping[str, Any], idempotency_key: str | None) -> Call[JobAccepted]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call("POST", "/jobs", _accepted, json=dict(job), headers=headers)


def prepare_batch(jobs: Sequence[Mapping[str, Any]], auto_keys: bool) -> list[dict[str, Any]]:
    """The batch's jobs, each with a job id (and an idempotency key when `auto_keys`), so
    that a batch sent again after a lost answer is recognised (see `submit_batch`)."""
    prepared = []
    for job in jobs:
        body = dict(job)
        body.setdefault("job_id", new_job_id())
        if auto_keys:
            body.setdefault("idempotency_key", new_idempotency_key())
        prepared.append(body)
    return prepared


def submit_batch(jobs: Sequence[Mapping[str, Any]]) -> Call[list[JobAccepted]]:
    """POST /jobs/batch: 201 for a new batch; 200 with the stored jobs when the same batch
    (the same job ids and bodies) was stored before, e.g. sent again after a lost answer."""

    def read(response: httpx.Response) -> list[JobAccepted]:
        accepted = _ACCEPTED_LIST.validate_python(checked(response).json()["items"])
        for item in accepted:
            item.created = response.status_code == 201
        return accepted

    return Call("POST", "/jobs/batch", read, json={"jobs": list(jobs)})


def get_job(job_id: str) -> Call[Job]:
    return Call("GET", f"/jobs/{job_id}", _model(_JOB))


def list_jobs(
    *,
    status: str | None = None,
    type: str | None = None,
    priority: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Call[JobPage]:
    params: dict[str, Any] = {
        "status": status,
        "type": type,
        "priority": priority,
        "created_after": created_after.isoformat() if created_after else None,
        "created_before": created_before.isoformat() if created_before else None,
        "limit": limit,
        "cursor": cursor,
    }
    return Call(
        "GET", "/jobs", _model(_PAGE), params={k: v for k, v in params.items() if v is not None}
    )


def cancel(job_id: str) -> Call[Job]:
    # Cancelling twice is a 409 on the second: send again only what never left.
    return Call("PATCH", f"/jobs/{job_id}/cancel", _model(_JOB), idempotent=False)


def logs(job_id: str) -> Call[list[LogEntry]]:
    def read(response: httpx.Response) -> list[LogEntry]:
        return _LOGS.validate_python(checked(response).json()["items"])

    return Call("GET", f"/jobs/{job_id}/logs", read)


def dead_letters(limit: int = 50, cursor: int | str | None = None) -> Call[DeadLetterPage]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", "/dead-letters", _model(_DEAD_PAGE), params=params)


def dead_letter(dead_letter_id: int) -> Call[DeadLetter]:
    return Call("GET", f"/dead-letters/{dead_letter_id}", _model(_DEAD))


def replay(dead_letter_id: int) -> Call[DeadLetter]:
    return Call("POST", f"/dead-letters/{dead_letter_id}/replay", _model(_DEAD), idempotent=False)


def discard(dead_letter_id: int) -> Call[None]:
    def read(response: httpx.Response) -> None:
        checked(response)

    return Call("DELETE", f"/dead-letters/{dead_letter_id}", read, idempotent=False)


def pause() -> Call[SchedulerState]:
    return Call("POST", "/scheduler/pause", _model(_SCHEDULER))


def resume() -> Call[SchedulerState]:
    return Call("POST", "/scheduler/resume", _model(_SCHEDULER))


def stats() -> Call[dict[str, Any]]:
    return Call("GET", "/stats", lambda response: dict(checked(response).json()))


def job_types() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/job-types", lambda response: list(checked(response).json()["items"]))
