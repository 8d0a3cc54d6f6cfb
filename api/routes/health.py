"""/healthz and /readyz, and the registry of job types."""

from __future__ import annotations

import pika
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import State
from api.errors import error_response
from api.schemas import JobTypePublic, JobTypes
from queue_service.broker import connection_parameters
from queue_service.job_types import registered_job_types

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
    try:
        params = connection_parameters(state.settings.broker_url, "taskq-api readiness")
        params.update(connection_attempts=1, socket_timeout=2, blocked_connection_timeout=2)
        pika.BlockingConnection(pika.ConnectionParameters(**params)).close()
        checks["rabbitmq"] = "ok"
    except Exception as error:
        checks["rabbitmq"] = f"unreachable: {type(error).__name__}"
    ready = all(v == "ok" for v in checks.values())
    if ready:
        return JSONResponse({"status": "ready", "checks": checks})
    return error_response(503, "service_unavailable", "not ready", checks)


@router.get("/job-types", response_model=JobTypes, tags=["jobs"])
def job_types() -> JobTypes:
    return JobTypes(
        items=[
            JobTypePublic(
                type=jt.name,
                description=jt.description,
                default_duration_seconds=jt.default_duration,
            )
            for jt in registered_job_types()
        ]
    )
