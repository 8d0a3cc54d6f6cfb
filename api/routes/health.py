"""/healthz and /readyz, and the registry of job types."""

from __future__ import annotations

from dataclasses import asdict

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import READ, State
from api.errors import AUTH_RESPONSES, error_response
from api.schemas import JobTypePublic, JobTypes, ResourceRequirements, RetryConfigIn
from queue_service.job_types import JobType, registered_job_types, submission_defaults
from queue_service.rabbitmq.readiness import broker_status

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "a dependency is unreachable"}})
def readyz(state: State) -> JSONResponse:
    """Readiness: PostgreSQL and RabbitMQ both reachable."""
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        checks["postgresql"] = "ok"
    except Exception as error:
        checks["postgresql"] = f"unreachable: {type(error).__name__}"
    checks["rabbitmq"] = broker_status(state.settings.broker_url)
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(503, "service_unavailable", "not ready", checks)


def _job_type_public(jt: JobType) -> JobTypePublic:
    defaults = submission_defaults(jt.name)
    return JobTypePublic(
        type=jt.name,
        description=jt.description,
        default_duration_seconds=jt.default_duration,
        timeout_seconds=defaults.timeout_seconds,
        retry_config=RetryConfigIn(**asdict(defaults.retry)),
        resource_requirements=ResourceRequirements(**asdict(defaults.resources)),
        non_retryable=[f"{e.__module__}.{e.__qualname__}" for e in jt.non_retryable],
        payload_schema=jt.payload_model.model_json_schema() if jt.payload_model else None,
    )


@router.get(
    "/job-types",
    response_model=JobTypes,
    tags=["jobs"],
    dependencies=[READ],
    responses=AUTH_RESPONSES,
)
def job_types() -> JobTypes:
    """Registered types (TASKQ_JOB_MODULES) with the defaults a submission falls back on:
    request > type default > global default."""
    return JobTypes(items=[_job_type_public(jt) for jt in registered_job_types()])
