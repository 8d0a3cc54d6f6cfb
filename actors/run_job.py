"""The job actor: runs one claimed attempt of one job.

Before it runs, the middleware stack has checked the attempt's lease (ResourceTokens)
and claimed the attempt (AttemptClaim). A final failure raises JobDeadLettered, which
Retries turns into message.fail(): RabbitMQ dead-letters the message through the
named dead-letter exchange.
"""

from __future__ import annotations

import dramatiq
import structlog

from actors.completion import JobDeadLettered, finish_and_publish
from actors.execution import run_attempt
from actors.runtime import get_runtime
from queue_service import names
from queue_service.job_types import JobContext, get_job_type
from queue_service.logging import get_logger
from queue_service.model import JobStatus
from queue_service.repository import jobs as jobs_repo
from queue_service.retry_policy import AttemptResult

log = get_logger(__name__)


@dramatiq.actor(
    actor_name=names.RUN_JOB_ACTOR,
    queue_name=names.JOBS_QUEUE,
    max_retries=0,
    throws=(JobDeadLettered,),
)
def run_job(job_id: str, attempt: int) -> None:
    runtime = get_runtime()
    with structlog.contextvars.bound_contextvars(job_id=job_id, attempt=attempt):
        with runtime.engine.connect() as conn:
            job = jobs_repo.get_job(conn, job_id)
        assert job is not None, "the claim returned this job"
        job_type = get_job_type(job.type)
        if job_type is None:
            report_result = AttemptResult.PERMANENT_ERROR
            error: str | None = f"unknown job type {job.type!r}"
            value = None
        else:

            def cancel_requested() -> bool:
                with runtime.engine.connect() as conn:
                    return jobs_repo.is_cancel_requested(conn, job_id)

            report = run_attempt(
                job_type,
                job.payload,
                JobContext(job_id, attempt, runtime.settings.duration_scale),
                job.timeout_seconds,
                cancel_requested,
                runtime.settings.cancel_poll_seconds,
            )
            report_result, error, value = report.result, report.error, report.value
        consequences = finish_and_publish(job_id, attempt, report_result, error, value)
        outcome = consequences.outcome
        log.info(
            "attempt_finished",
            result=report_result.value,
            status=outcome.status.value if outcome else None,
            error=error,
        )
        if outcome is not None and outcome.status is JobStatus.FAILED:
            raise JobDeadLettered(f"{outcome.dead_letter_reason}: {error}")
