"""Every error leaves the API as `{"error": {"code", "message", "details"}}`.

Domain errors map to HTTP statuses here, in one place; routes just raise them.
"""

from __future__ import annotations

from typing import Any

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

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "`malformed_json`: the body is not valid JSON"},
    404: {
        "model": ErrorResponse,
        "description": "not found (`job_not_found`, `dead_letter_not_found`)",
    },
    409: {
        "model": ErrorResponse,
        "description": "conflict (`idempotency_conflict`, `not_cancellable`, `duplicate_job_id`)",
    },
    413: {"model": ErrorResponse, "description": "`payload_too_large`"},
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


def error_response(status: int, code: str, message: str, details: Any = None) -> JSONResponse:
    """The error envelope; a 503 also says when to retry (`Retry-After`)."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details}},
        headers=headers,
    )


def _validation_details(error: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
        for e in error.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.TaskQueueError)
    async def domain_error(request: Request, error: errors.TaskQueueError) -> JSONResponse:
        status = STATUS_BY_ERROR.get(type(error), 400)
        return error_response(status, error.code, error.message, error.details)

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
        codes = {400: "malformed_json", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(error.status_code, "http_error")
        return error_response(error.status_code, code, str(error.detail))

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def database_down(request: Request, error: sa.exc.DBAPIError) -> JSONResponse:
        log.error("database_unavailable", error=str(error.orig))
        return error_response(503, "service_unavailable", "PostgreSQL is unreachable")

    @app.exception_handler(sa.exc.TimeoutError)
    async def database_busy(request: Request, error: sa.exc.TimeoutError) -> JSONResponse:
        # Every pooled connection is taken (or hangs on a PostgreSQL that went away).
        log.error("database_pool_exhausted", path=request.url.path)
        return error_response(503, "service_unavailable", "PostgreSQL is unreachable")

    @app.exception_handler(sa.exc.DataError)
    async def unstorable_value(request: Request, error: sa.exc.DataError) -> JSONResponse:
        # PostgreSQL refused a value the schemas let through: a NUL character, NaN or
        # Infinity inside a payload, an id beyond bigint. Bad input, not a server fault.
        reason = str(error.orig).splitlines()[0] if error.orig is not None else str(error)
        log.warning("unstorable_value", path=request.url.path, error=reason)
        return error_response(
            422, "validation_error", "a value cannot be stored or compared", {"reason": reason}
        )

    @app.exception_handler(sa.exc.IntegrityError)
    async def conflict(request: Request, error: sa.exc.IntegrityError) -> JSONResponse:
        # A unique index raced a concurrent submission (e.g. an idempotency key in a batch).
        return error_response(
            409, "conflict", "the request conflicts with stored jobs", str(error.orig)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path)
        return error_response(500, "internal_error", "an unexpected error occurred")
