"""/jobs: submit, inspect, list, cancel, logs."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import psycopg
import pydantic_core
import sqlalchemy as sa
from fastapi import APIRouter, Header, Query, Request, Response

from api.deps import READ, SUBMIT, AppState, State
from api.errors import ERROR_RESPONSES, names_a_taken_job_id
from api.schemas import (
    MAX_PAYLOAD_BYTES,
    BatchAccepted,
    BatchCreate,
    IsoDateTime,
    JobAccepted,
    JobCreate,
    JobLogEntry,
    JobLogs,
    JobProgress,
    JobPublic,
    JobsPublic,
    JobSummary,
    RetryConfigIn,
    summary_fields,
)
from queue_service import errors, metrics
from queue_service.db import in_autocommit, in_transaction
from queue_service.job_types import submission_defaults
from queue_service.lifecycle import cancel_job
from queue_service.model import Admitted, JobStatus, Priority
from queue_service.rabbitmq.publishing import commit_then_publish
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.scheduling import explain_wait
from queue_service.submission import new_job_id, new_job_ids, original_batch, submit_batch

# Submitting needs the submit scope, which includes read: the two POST routes check it
# alone (one auth dependency per request, not read and then submit), on a router of
# their own that the app includes first (so the OpenAPI document keeps its order).
submissions = APIRouter(
    prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES, dependencies=[SUBMIT]
)
reads = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES, dependencies=[READ])


def _now() -> datetime:
    return datetime.now(UTC)


def _check_payload_size(job: JobCreate, index: int | None = None) -> None:
    if not job.payload:
        return
    size = len(json.dumps(job.payload, separators=(",", ":")).encode())
    if size > MAX_PAYLOAD_BYTES:
        where = "" if index is None else f" (jobs[{index}])"
        raise errors.PayloadTooLarge(
            f"payload is {size} bytes{where}; the limit is {MAX_PAYLOAD_BYTES}",
            {"size": size, "limit": MAX_PAYLOAD_BYTES, "index": index},
        )


@submissions.post(
    "",
    status_code=201,
    response_model=JobAccepted,
    responses={200: {"model": JobAccepted, "description": "a repeated submission: the original"}},
)
async def create_job(
    body: JobCreate,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Submit one job. Repeating a submission (same job_id or idempotency key, same body)
    returns the original with 200; a different body under the same id or key is a 409.
    Concurrent submissions share one transaction (group commit); each is answered once
    its job is committed."""
    _check_payload_size(body)
    spec = body.to_spec(idempotency_key, job_id=new_job_id())
    state: AppState = request.app.state.taskq
    answer = await state.submissions.submit(spec)
    metrics.jobs_submitted(1 if answer.created else 0)
    # The answer as response_model would render it, without validating it once more.
    return Response(
        _JOB_ACCEPTED_JSON(answer.accepted),
        status_code=201 if answer.created else 200,
        headers={"Location": f"/jobs/{answer.accepted.job_id}"},
        media_type="application/json",
    )


_JOB_ACCEPTED_JSON = JobAccepted.__pydantic_serializer__.to_json


@submissions.post(
    "/batch",
    status_code=201,
    response_model=BatchAccepted,
    responses={200: {"model": BatchAccepted, "description": "the same batch, stored before"}},
)
def create_batch(body: BatchCreate, state: State) -> Response:
    """Submit up to 10,000 jobs atomically. `depends_on` may name jobs of the same batch,
    in any order, or existing jobs. A cycle is rejected (422 `dependency_cycle`, naming
    it) and nothing of the batch is stored. The same batch sent again (every job with the
    job id it was stored under, and the same body) answers 200 with the stored jobs."""
    for index, job in enumerate(body.jobs):
        _check_payload_size(job, index)
    # Each type's defaults looked up once, the ids drawn together.
    defaults = {name: submission_defaults(name) for name in {job.type for job in body.jobs}}
    drawn = new_job_ids(len(body.jobs))
    specs = [
        job.to_spec(job_id=job_id, defaults=defaults[job.type])
        for job, job_id in zip(body.jobs, drawn, strict=True)
    ]
    # Only the ids the client chose may already be taken.
    unchosen = {job_id for job, job_id in zip(body.jobs, drawn, strict=True) if not job.job_id}
    now = _now()

    def work(conn: sa.Connection) -> tuple[list[dict[str, Any]], list[Admitted]]:
        return submit_batch(conn, state.settings, specs, now, admit=False, drawn_ids=unchosen)

    try:
        rows, _ = in_transaction(state.engine, work)
    except (errors.DuplicateJobId, sa.exc.IntegrityError, psycopg.IntegrityError) as error:
        if not names_a_taken_job_id(error):
            raise
        # A retry of a batch stored before (its answer lost): the stored jobs, not a
        # conflict. Looked up only now, so a new batch pays nothing for it.
        originals = in_transaction(state.engine, lambda conn: original_batch(conn, specs))
        if originals is None:
            raise
        return _batch_answer(originals, status_code=200)
    if any(row["status"] == JobStatus.PENDING for row in rows):
        state.submissions.admit_soon()  # after the answer, beside it
    metrics.jobs_submitted(len(rows))
    return _batch_answer(rows, status_code=201)


def _batch_answer(rows: Sequence[dict[str, Any]], status_code: int) -> Response:
    """The answer as response_model renders it, straight from the rows: no model built or
    validated per job (the rows hold what the schema allows)."""
    return Response(
        pydantic_core.to_json(
            {
                "items": [
                    {
                        "job_id": row["id"],
                        "status": row["status"],
                        "created_at": row["created_at"],
                        "priority": row["priority"],
                        "position_in_queue": None,
                    }
                    for row in rows
                ]
            }
        ),
        status_code=status_code,
        media_type="application/json",
    )


def _job_public(conn: sa.Connection, state: AppState, job: Any) -> JobPublic:
    """`job` is a row of `jobs_repo.get_job_detail`."""
    dependencies = [(parent_id, status) for parent_id, status in job.dependencies]
    return JobPublic(
        **summary_fields(job),
        payload=job.payload,
        retry_config=RetryConfigIn(
            max_attempts=job.max_attempts,
            backoff_multiplier=job.backoff_multiplier,
            initial_delay_seconds=job.initial_delay_seconds,
            max_delay_seconds=job.max_delay_seconds,
        ),
        timeout_seconds=job.timeout_seconds,
        run_at=job.run_at,
        idempotency_key=job.idempotency_key,
        max_attempts=job.max_attempts,
        queued_at=job.queued_at,
        next_attempt_at=job.next_attempt_at,
        cancel_requested_at=job.cancel_requested_at,
        depends_on=[d for d, _ in dependencies],
        dependents=list(job.dependents),
        blocked_by=[d for d, status in dependencies if status != JobStatus.COMPLETED],
        waiting_reason=explain_wait(conn, state.settings, job, _now()),
        result=job.result,
        progress=_progress(job.progress),
    )


def _progress(latest: dict[str, Any] | None) -> JobProgress | None:
    if latest is None:
        return None
    data = latest.get("data") or {}
    return JobProgress(
        fraction=data.get("fraction", 0.0),
        message=data.get("message", ""),
        at=datetime.fromisoformat(latest["at"]),
    )


# Reads run in autocommit (`in_autocommit`): no BEGIN and no ROLLBACK, two round trips
# fewer than a transaction per request. Their answers are serialized from the model they
# build, without FastAPI validating it once more for `response_model`.
_JOB_PUBLIC_JSON = JobPublic.__pydantic_serializer__.to_json
_JOBS_PUBLIC_JSON = JobsPublic.__pydantic_serializer__.to_json


@reads.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, state: State) -> Response:
    """The job with its status, attempts, timestamps, graph edges and why it waits."""

    def read(conn: sa.Connection) -> JobPublic:
        job = jobs_repo.get_job_detail(conn, job_id)
        if job is None:
            raise errors.JobNotFound(f"job {job_id!r} not found", {"job_id": job_id})
        return _job_public(conn, state, job)

    job = in_autocommit(state.engine, read)
    return Response(_JOB_PUBLIC_JSON(job), media_type="application/json")


def _encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), job_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Only what _encode_cursor makes: `[iso timestamp, job id]`, both strings."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # A flat two-item array needs one level; refuse nested ones before json does the
        # recursive work (a cursor of thousands of brackets would exhaust its recursion).
        if raw.count(b"[") + raw.count(b"{") > 1:
            raise ValueError("nested cursor")
        decoded = json.loads(raw)
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise ValueError("not a pair")
        created_at, job_id = decoded
        if not (isinstance(created_at, str) and isinstance(job_id, str)):
            raise ValueError("not strings")
        return datetime.fromisoformat(created_at), job_id
    except (ValueError, TypeError, RecursionError) as error:
        raise errors.InvalidCursor("cursor is not one this API returned") from error


@reads.get("", response_model=JobsPublic)
def list_jobs(
    state: State,
    status: JobStatus | None = None,
    type: Annotated[str | None, Query(max_length=128)] = None,
    priority: Priority | None = None,
    created_after: IsoDateTime | None = None,
    created_before: IsoDateTime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=1024, description="next_cursor of the previous page")
    ] = None,
) -> Response:
    """Jobs newest first, filtered; pass `next_cursor` back as `cursor` for the next page."""
    after = _decode_cursor(cursor) if cursor else None

    def read(conn: sa.Connection) -> Sequence[Any]:
        return jobs_repo.list_jobs(
            conn,
            status=status.value if status else None,
            type_=type,
            priority=priority.value if priority else None,
            created_after=created_after,
            created_before=created_before,
            after=after,
            limit=limit + 1,
        )

    rows = in_autocommit(state.engine, read)
    page = rows[:limit]
    next_cursor = (
        _encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit and page else None
    )
    answer = JobsPublic(
        items=[JobSummary(**summary_fields(r)) for r in page], next_cursor=next_cursor
    )
    return Response(_JOBS_PUBLIC_JSON(answer), media_type="application/json")


@reads.patch(
    "/{job_id}/cancel",
    response_model=JobPublic,
    dependencies=[SUBMIT],
    responses={202: {"model": JobPublic, "description": "running: the attempt is being stopped"}},
)
def cancel(job_id: str, state: State, response: Response) -> JobPublic:
    """Cancel a waiting job at once (200), or stop a running one (202, then `cancelled`).
    A finished job cannot be cancelled (409). Dependents are cancelled with it.
    200 always means the job is cancelled; a running attempt that finishes before it can
    be stopped answers 202 with the job's status as it ended (e.g. `completed`)."""

    commit_then_publish(
        state.engine,
        state.broker,
        lambda conn: cancel_job(conn, state.settings, job_id, _now()),
    )
    with state.engine.connect() as conn:
        job = jobs_repo.get_job_detail(conn, job_id)
        assert job is not None
        # Decided on the job as it is now: a running attempt may have ended meanwhile.
        response.status_code = 200 if job.status == JobStatus.CANCELLED else 202
        return _job_public(conn, state, job)


@reads.get("/{job_id}/logs", response_model=JobLogs)
def job_logs(job_id: str, state: State) -> JobLogs:
    """Execution history: every transition, claim, token grant and release, with errors."""
    with state.engine.connect() as conn:
        if jobs_repo.get_job(conn, job_id) is None:
            raise errors.JobNotFound(f"job {job_id!r} not found", {"job_id": job_id})
        rows = events_repo.list_job_events(conn, job_id)
    return JobLogs(
        items=[
            JobLogEntry(
                at=r.at,
                level=r.level,
                event=r.event,
                attempt=r.attempt,
                message=r.message,
                data={**r.data, "status": r.status, "previous_status": r.previous_status}
                if r.status
                else r.data,
            )
            for r in rows
        ]
    )
