"""The registry of job types: `@job_type(...)` and the modules that register them.

A handler is a plain function, sync or async, called as `handler(payload, ctx)`:

    @job_type("send_invoice", timeout_seconds=60, non_retryable=(InvoiceVoid,),
              payload_model=Invoice)
    def send_invoice(payload: Invoice, ctx: JobContext) -> dict[str, str]:
        ctx.logger.info("sending", invoice=payload.number)
        ...

With a `payload_model`, the payload is checked against it at submission (a mismatch is a
422 naming the field) and the handler receives the validated model instance; without one
it receives the payload dict. The api and the workers import every module listed in
`TASKQ_JOB_MODULES` at start (`load_job_modules`); nothing in the core names a type.

The options given here are the type's defaults. At submission each one is resolved as
request > type default > global default (`submission_defaults`).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic

from queue_service import errors
from queue_service.model import Resources, RetryConfig

if TYPE_CHECKING:
    from queue_service.job_context import JobContext

# The global default time limit of an attempt, when neither request nor type gives one.
DEFAULT_TIMEOUT_SECONDS = 300.0


class RetryableJobError(Exception):
    """The attempt failed but another attempt may succeed."""


class NonRetryableJobError(Exception):
    """The job can never succeed: fail it at once, without retries."""


Handler = Callable[[Any, "JobContext"], Any]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobType:
    """A registered type: its handler and the defaults a submission falls back on."""

    name: str
    handler: Handler
    is_async: bool
    description: str = ""
    timeout_seconds: float | None = None
    retry: RetryConfig | None = None
    resources: Resources | None = None
    non_retryable: tuple[type[BaseException], ...] = ()
    payload_model: type[pydantic.BaseModel] | None = None
    # How long one run usually takes (informational, shown by GET /job-types).
    default_duration: float | None = None

    def payload_for_handler(self, payload: Mapping[str, Any]) -> Any:
        """What the handler receives: the validated model, or the payload itself."""
        if self.payload_model is None:
            return payload
        return self.payload_model.model_validate(payload)


@dataclass(frozen=True)
class SubmissionDefaults:
    """The defaults of a submission that omits timeout, retry config or resources."""

    timeout_seconds: float
    retry: RetryConfig
    resources: Resources


_registry: dict[str, JobType] = {}


def job_type(
    name: str,
    *,
    timeout_seconds: float | None = None,
    retry: RetryConfig | None = None,
    resources: Resources | None = None,
    non_retryable: Iterable[type[BaseException]] = (),
    payload_model: type[pydantic.BaseModel] | None = None,
    description: str = "",
    default_duration: float | None = None,
) -> Callable[[H], H]:
    """Register the decorated function as the handler of job type `name`.

    It may be sync (run in the worker thread) or async (run on the worker thread's event
    loop). `non_retryable` exceptions fail the job at once, like `NonRetryableJobError`;
    any other exception spends an attempt and is retried per the job's retry config.
    """
    if timeout_seconds is not None and timeout_seconds <= 0:
        raise ValueError(f"job type {name!r}: timeout_seconds must be positive")
    if payload_model is not None and not (
        isinstance(payload_model, type) and issubclass(payload_model, pydantic.BaseModel)
    ):
        raise TypeError(f"job type {name!r}: payload_model must be a pydantic model class")
    stop_at_once = tuple(non_retryable)

    def register(handler: H) -> H:
        if name in _registry:
            raise ValueError(f"job type {name!r} is already registered")
        if not callable(handler):
            raise TypeError(f"job type {name!r}: the handler must be callable")
        _registry[name] = JobType(
            name=name,
            handler=handler,
            is_async=inspect.iscoroutinefunction(handler),
            description=description or (inspect.getdoc(handler) or "").split("\n", 1)[0],
            timeout_seconds=timeout_seconds,
            retry=retry,
            resources=resources,
            non_retryable=stop_at_once,
            payload_model=payload_model,
            default_duration=default_duration,
        )
        return handler

    return register


def unregister(name: str) -> None:
    """Forget a type (tests that register throw-away types)."""
    _registry.pop(name, None)


def get_job_type(name: str) -> JobType | None:
    return _registry.get(name)


def registered_job_types() -> list[JobType]:
    return sorted(_registry.values(), key=lambda jt: jt.name)


def submission_defaults(name: str) -> SubmissionDefaults:
    """Type default > global default, for each option a request may omit."""
    jt = _registry.get(name)
    return SubmissionDefaults(
        timeout_seconds=(
            jt.timeout_seconds
            if jt is not None and jt.timeout_seconds is not None
            else DEFAULT_TIMEOUT_SECONDS
        ),
        retry=jt.retry if jt is not None and jt.retry is not None else RetryConfig(),
        resources=jt.resources if jt is not None and jt.resources is not None else Resources(),
    )


def check_payload(name: str, payload: Mapping[str, Any]) -> None:
    """Raise InvalidPayload, naming each bad field, if the payload breaks the type's model."""
    jt = _registry.get(name)
    if jt is None or jt.payload_model is None:
        return
    try:
        jt.payload_model.model_validate(payload)
    except pydantic.ValidationError as error:
        details = [
            {"loc": ["payload", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in error.errors(include_url=False, include_input=False)
        ]
        fields = ", ".join(".".join(str(p) for p in d["loc"]) for d in details)
        raise errors.InvalidPayload(
            f"the payload does not match job type {name!r}: {fields}", details
        ) from None


class JobModuleImportError(ImportError):
    """A module listed in TASKQ_JOB_MODULES cannot be imported."""


def parse_module_list(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def load_job_modules(value: str) -> list[str]:
    """Import every module of the comma-separated list (TASKQ_JOB_MODULES), in order.

    Importing registers their types. A module already imported is not imported again.
    """
    names = parse_module_list(value)
    for module in names:
        try:
            importlib.import_module(module)
        except Exception as error:
            raise JobModuleImportError(
                f"TASKQ_JOB_MODULES: cannot import job module {module!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
    return names
