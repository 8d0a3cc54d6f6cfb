"""Every error leaves the API as `{"error": {"code", "message", "details"}}`.

Domain errors map to HTTP statuses here, in one place; routes just raise them.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.schemas import ErrorResponse
from queue_service import errors
from queue_service.logging import get_logger

log = get_logger(__name__)

# What a 503 tells clients to wait before trying again: PostgreSQL or RabbitMQ restarting
# is a matter of seconds.
RETRY_AFTER_SECONDS = 5

STATUS_BY_ERROR: dict[type[errors.TaskQueueError], int] = {
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.JobNotFound: 404,
    errors.DeadLetterNotFound: 404,
    errors.IdempotencyConflict: 409,
    errors.NotCancellable: 409,
    errors.NotReplayable: 409,
    errors.DuplicateJobId: 409,
    errors.PayloadTooLarge: 413,
    errors.InvalidJob: 422,
    errors.InvalidCursor: 422,
    errors.UnknownJobType: 422,
    errors.InvalidPayload: 422,
    errors.ExceedsCapacity: 422,
    errors.UnknownDependency: 422,
    errors.DependencyCycle: 422,
    errors.ServiceUnavailable: 503,
}

# A unique index, foreign key or check that PostgreSQL enforced: the domain error it means.
# Anything not listed is a conflict with stored data (409) with a fixed message.
ERROR_BY_CONSTRAINT: dict[str, type[errors.TaskQueueError]] = {
    "jobs_pkey": errors.DuplicateJobId,
    "uq_jobs_idempotency_key": errors.IdempotencyConflict,
    "job_dependencies_depends_on_fkey": errors.UnknownDependency,
}
MESSAGE_BY_CONSTRAINT: dict[str, str] = {
    "jobs_pkey": "a job with this job_id already exists",
    "uq_jobs_idempotency_key": "another job was submitted with this idempotency key",
    "job_dependencies_depends_on_fkey": "a job named in depends_on does not exist (any more)",
}

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "`unauthorized`: no `Authorization: Bearer <key>`, or an unknown key",
    },
    403: {"model": ErrorResponse, "description": "`forbidden`: the key's scope is too low"},
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    400: {"model": ErrorResponse, "description": "`malformed_json`: the body is not valid JSON"},
    404: {
        "model": ErrorResponse,
        "description": "not found (`job_not_found`, `dead_letter_not_found`)",
    },
    409: {
        "model": ErrorResponse,
        "description": "conflict (`idempotency_conflict`, `not_cancellable`, `duplicate_job_id`)",
    },
    413: {
        "model": ErrorResponse,
        "description": "`payload_too_large`: a payload over 64 KiB, or a request body over "
        "TASKQ_MAX_REQUEST_BYTES",
    },
    422: {
        "model": ErrorResponse,
        "description": "invalid (`validation_error`, `invalid_cursor`, `unknown_job_type`, "
        "`invalid_payload`, `exceeds_capacity`, `unknown_dependency`, `dependency_cycle`)",
    },
    503: {
        "model": ErrorResponse,
        "description": "`service_unavailable`: PostgreSQL or RabbitMQ unreachable",
    },
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error envelope; a 503 also says when to retry (`Retry-After`)."""
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), **(headers or {})}
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details}},
        headers=headers,
    )


def _error_id() -> str:
    """Names one server-side failure in the log and in the answer, so an operator can find
    the log line without the client ever seeing database or driver text."""
    return uuid.uuid4().hex[:12]


def _allowed_methods(request: Request) -> list[str]:
    """The documented methods of the request's path; a literal path (/jobs/batch) wins over
    a template that also matches it (/jobs/{job_id})."""
    path = request.url.path
    paths: dict[str, Any] = request.app.openapi()["paths"]
    if path in paths:
        return sorted(method.upper() for method in paths[path])
    allowed: set[str] = set()
    for template, operations in paths.items():
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            allowed.update(method.upper() for method in operations)
    return sorted(allowed)


def _driver_error(error: Exception) -> Exception:
    """The driver's exception: SQLAlchemy wraps it as `.orig`; raw cursor work (COPY) raises
    it bare."""
    orig = getattr(error, "orig", None)
    return orig if isinstance(orig, Exception) else error


def _constraint(error: Exception) -> str | None:
    diag = getattr(_driver_error(error), "diag", None)
    name = getattr(diag, "constraint_name", None)
    return name if isinstance(name, str) else None


def names_a_taken_job_id(error: Exception) -> bool:
    """The error says a job id is taken: the domain's check, or the primary key when a
    concurrent submission of the same id committed first."""
    return isinstance(error, errors.DuplicateJobId) or _constraint(error) == "jobs_pkey"


def _validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in error.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.TaskQueueError)
    async def domain_error(request: Request, error: errors.TaskQueueError) -> JSONResponse:
        status = STATUS_BY_ERROR.get(type(error), 400)
        headers = {"WWW-Authenticate": 'Bearer realm="taskq"'} if status == 401 else None
        return error_response(status, error.code, error.message, error.details, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        details = _validation_details(error)
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(
                400, "malformed_json", "the request body is not valid JSON", details
            )
        return error_response(422, "validation_error", "the request is invalid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI raises a 400 only when it cannot parse the body (e.g. JSON nested too deep).
        codes = {
            400: "malformed_json",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        code = codes.get(error.status_code, "http_error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Every method of the path (routes are one per method, so the router's own
            # Allow names only the first route it tried).
            headers["Allow"] = ", ".join(_allowed_methods(request)) or headers.get("Allow", "")
        return error_response(error.status_code, code, str(error.detail), headers=headers)

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    @app.exception_handler(psycopg.OperationalError)
    async def database_down(request: Request, error: Exception) -> JSONResponse:
        log.error("database_unavailable", path=request.url.path, error=str(_driver_error(error)))
        return error_response(503, "service_unavailable", "PostgreSQL is unreachable")

    @app.exception_handler(sa.exc.TimeoutError)
    async def database_busy(request: Request, error: sa.exc.TimeoutError) -> JSONResponse:
        # Every pooled connection is taken (or hangs on a PostgreSQL that went away).
        log.error("database_pool_exhausted", path=request.url.path)
        return error_response(503, "service_unavailable", "PostgreSQL is unreachable")

    @app.exception_handler(sa.exc.DataError)
    async def unstorable_value(request: Request, error: sa.exc.DataError) -> JSONResponse:
        # PostgreSQL refused a value the schemas let through: a NUL character, NaN or
        # Infinity inside a payload, a number or date beyond its types. Bad input, not a
        # server fault; the driver's text stays in the log.
        error_id = _error_id()
        log.warning(
            "unstorable_value", path=request.url.path, error_id=error_id, error=str(error.orig)
        )
        return error_response(
            422,
            "validation_error",
            "a value cannot be stored or compared (e.g. a NUL character, NaN or Infinity, "
            "a number or date out of range)",
            {"error_id": error_id},
        )

    @app.exception_handler(sa.exc.IntegrityError)
    @app.exception_handler(psycopg.IntegrityError)
    async def conflict(request: Request, error: Exception) -> JSONResponse:
        # A unique index or foreign key raced a concurrent request: say which rule, by the
        # constraint's name, never with the database's text.
        constraint = _constraint(error)
        error_id = _error_id()
        log.warning(
            "integrity_error",
            path=request.url.path,
            constraint=constraint,
            error_id=error_id,
            error=str(_driver_error(error)),
        )
        domain = ERROR_BY_CONSTRAINT.get(constraint or "")
        if domain is not None:
            message = MESSAGE_BY_CONSTRAINT[constraint or ""]
            return error_response(STATUS_BY_ERROR[domain], domain.code, message)
        return error_response(
            409,
            "conflict",
            "the request conflicts with stored data; retry it",
            {"error_id": error_id},
        )

    @app.exception_handler(sa.exc.DBAPIError)
    @app.exception_handler(psycopg.Error)
    async def database_error(request: Request, error: Exception) -> JSONResponse:
        error_id = _error_id()
        log.error(
            "database_error",
            path=request.url.path,
            error_id=error_id,
            error=str(_driver_error(error)),
        )
        return error_response(
            500, "internal_error", "a database error occurred", {"error_id": error_id}
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        error_id = _error_id()
        log.exception("unhandled_error", path=request.url.path, error_id=error_id)
        return error_response(
            500, "internal_error", "an unexpected error occurred", {"error_id": error_id}
        )
