"""Two real job types, as a team would write them in its own package.

    TASKQ_JOB_MODULES=queue_service.simulated_jobs,examples.report_jobs

- `csv_report` (sync): renders rows to a CSV file, reporting progress. It writes to a
  temporary file and renames it, so a retried or repeated job never leaves half a report.
- `call_endpoint` (async): calls an HTTP endpoint. A 5xx or a connection error is worth
  retrying: it raises, and the queue retries with the type's backoff (5 attempts, 2 s
  doubling). A 4xx will not get better: `EndpointRefused` is declared non-retryable, so
  the job fails at once. The job id goes along as `Idempotency-Key`, so the receiver can
  tell a retry from a new request.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, HttpUrl

from queue_service.job_context import JobContext
from queue_service.job_types import RetryableJobError, job_type
from queue_service.model import Resources, RetryConfig

# --- csv_report ---------------------------------------------------------------------------


class CsvReport(BaseModel):
    output_path: str = Field(min_length=1, description="where the CSV file goes")
    rows: list[dict[str, Any]] = Field(min_length=1)
    columns: list[str] | None = Field(
        default=None, description="column order; default: the keys of the first row"
    )


@job_type(
    "csv_report",
    payload_model=CsvReport,
    timeout_seconds=120,
    resources=Resources(cpu_units=1, memory_mb=256),
    description="renders rows to a CSV file",
)
def csv_report(payload: CsvReport, ctx: JobContext) -> dict[str, Any]:
    columns = payload.columns or list(payload.rows[0])
    target = Path(payload.output_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    ctx.logger.info("rendering report", path=str(target), rows=len(payload.rows))
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for done, row in enumerate(payload.rows, start=1):
                if ctx.should_stop():  # cancelled or out of time: leave no file behind
                    raise RetryableJobError("stopped before the report was complete")
                writer.writerow(row)
                if done % 1000 == 0:
                    ctx.progress(done / len(payload.rows), f"{done} rows")
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    ctx.progress(1.0, "written")
    size = target.stat().st_size
    ctx.logger.info("report written", path=str(target), bytes=size)
    return {"path": str(target), "rows": len(payload.rows), "bytes": size}


# --- call_endpoint ------------------------------------------------------------------------


class EndpointCall(BaseModel):
    url: HttpUrl
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    json_body: dict[str, Any] | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class EndpointRefused(Exception):
    """The endpoint answered 4xx: the request itself is wrong, retrying will not help."""


@job_type(
    "call_endpoint",
    payload_model=EndpointCall,
    timeout_seconds=60,
    retry=RetryConfig(max_attempts=5, initial_delay_seconds=2.0, backoff_multiplier=2.0),
    non_retryable=(EndpointRefused,),
    description="calls an HTTP endpoint, retrying 5xx and connection errors",
)
async def call_endpoint(payload: EndpointCall, ctx: JobContext) -> dict[str, Any]:
    headers = {"Idempotency-Key": ctx.job_id}
    ctx.logger.info("calling", method=payload.method, url=str(payload.url), attempt=ctx.attempt)
    async with httpx.AsyncClient(timeout=payload.timeout_seconds) as client:
        try:
            response = await client.request(
                payload.method, str(payload.url), json=payload.json_body, headers=headers
            )
        except httpx.TransportError as error:
            raise RetryableJobError(f"{type(error).__name__}: {error}") from error
    if response.status_code >= 500:
        raise RetryableJobError(f"{response.status_code} from {payload.url}")
    if response.status_code >= 400:
        raise EndpointRefused(f"{response.status_code} from {payload.url}: {response.text[:200]}")
    ctx.logger.info("answered", status=response.status_code)
    return {"status": response.status_code, "body": _body(response)}


def _body(response: httpx.Response) -> Any:
    """The answer as JSON when it is JSON, else its first 1,000 characters."""
    try:
        return response.json()
    except ValueError:
        return response.text[:1000]
