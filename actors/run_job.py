"""The job actor: runs one claimed attempt of one job.

Before it runs, AttemptClaim has claimed the attempt (through the process's attempt
writer) and handed over the claimed row, so the actor reads nothing from PostgreSQL
before the handler starts. A final failure raises JobDeadLettered, which Retries turns
into message.fail(): RabbitMQ dead-letters the message through the named exchange.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import dramatiq

from actors.completion import JobDeadLettered, complete
from actors.execution import AttemptReport, run_attempt
from actors.middleware.attempt_claim import claimed_attempt
from actors.runtime import get_runtime
from queue_service import names
from queue_service.job_context import build_context
from queue_service.job_types import get_job_type
from queue_service.lifecycle import AttemptEnd
from queue_service.logging import attempt_context, get_logger
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
    claimed = claimed_attempt()
    with attempt_context(job_id, attempt):
        started = time.monotonic()
        # The job's started_at: a message claimed on delivery may have waited for a thread.
        started_at = datetime.now(UTC)
        job_type = get_job_type(claimed.type)
        if job_type is None:
            report = AttemptReport(
                AttemptResult.PERMANENT_ERROR, f"unknown job type {claimed.type!r}"
            )
        else:

            def cancel_requested() -> bool:
                with runtime.engine.connect() as conn:
                    return jobs_repo.is_cancel_requested(conn, job_id)

            report = run_attempt(
                job_type,
                claimed.payload,
                build_context(
                    job_id, attempt, runtime.engine, duration_scale=runtime.settings.duration_scale
                ),
                claimed.timeout_seconds,
                cancel_requested,
                runtime.settings.cancel_poll_seconds,
            )
        run_seconds = time.monotonic() - started
        # An attempt that did not succeed gets a line at INFO. A success is DEBUG, as its
        # claim is: the job's own event log (GET /jobs/{id}/logs) records each start with
        # its worker and each completion, and at hundreds of jobs a second a line per job
        # was about a tenth of a worker's CPU (py-spy, no-op jobs).
        emit = log.debug if report.result is AttemptResult.SUCCEEDED else log.info
        emit(
            "attempt_finished",
            result=report.result.value,
            error=report.error,
            run_ms=round(run_seconds * 1000, 2),
        )
        complete(
            AttemptEnd(
                job_id, attempt, report.result, report.error, report.value, started_at=started_at
            ),
            claimed.type,
            run_seconds,
        )
