"""The job-type registry: registration, submission defaults, payload models, job modules."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest

from api.schemas import JobCreate
from queue_service import errors
from queue_service.job_types import (
    DEFAULT_TIMEOUT_SECONDS,
    JobModuleImportError,
    get_job_type,
    job_type,
    load_job_modules,
    registered_job_types,
    submission_defaults,
    unregister,
)
from queue_service.model import Resources, RetryConfig


class Invoice(pydantic.BaseModel):
    number: str
    amount: float = pydantic.Field(gt=0)


class VoidInvoice(Exception):
    pass


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Type names registered by a test, forgotten afterwards."""
    registered: list[str] = []
    yield registered
    for name in registered:
        unregister(name)


def test_sync_and_async_handlers_register_with_their_options(names: list[str]) -> None:
    # Given a sync handler with every option and an async one with none
    names += ["t_invoice", "t_ping"]

    @job_type(
        "t_invoice",
        timeout_seconds=30,
        retry=RetryConfig(max_attempts=5),
        resources=Resources(cpu_units=2, memory_mb=512),
        non_retryable=(VoidInvoice,),
        payload_model=Invoice,
        description="sends an invoice",
    )
    def send_invoice(payload: Invoice, ctx: object) -> None:
        pass

    @job_type("t_ping")
    async def ping(payload: dict[str, object], ctx: object) -> None:
        """Pings a host.

        More text that is not the description."""

    # When they are looked up
    invoice, ping_type = get_job_type("t_invoice"), get_job_type("t_ping")

    # Then both are registered as written, the decorated functions left unchanged
    assert invoice is not None and ping_type is not None
    assert (invoice.is_async, ping_type.is_async) == (False, True)
    assert invoice.handler is send_invoice
    assert invoice.non_retryable == (VoidInvoice,)
    assert (invoice.description, ping_type.description) == ("sends an invoice", "Pings a host.")
    assert {"t_invoice", "t_ping"} <= {jt.name for jt in registered_job_types()}


def test_a_name_registers_once(names: list[str]) -> None:
    names.append("t_twice")
    job_type("t_twice")(lambda payload, ctx: None)
    with pytest.raises(ValueError, match="already registered"):
        job_type("t_twice")(lambda payload, ctx: None)


def test_bad_options_are_refused_at_registration() -> None:
    with pytest.raises(ValueError, match="timeout_seconds"):
        job_type("t_bad", timeout_seconds=0)
    with pytest.raises(TypeError, match="payload_model"):
        job_type("t_bad", payload_model=dict)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_body", "timeout", "max_attempts", "initial_delay", "cpu", "memory"),
    [
        # nothing given: every option is the type's default
        ({}, 30.0, 5, 1.0, 2, 512),
        # given fields win, field by field; the rest stays the type's default
        (
            {
                "timeout_seconds": 7,
                "retry_config": {"initial_delay_seconds": 9},
                "resource_requirements": {"memory_mb": 64},
            },
            7.0,
            5,
            9.0,
            2,
            64,
        ),
    ],
)
def test_submission_resolves_request_then_type_then_global_defaults(
    names: list[str],
    request_body: dict[str, object],
    timeout: float,
    max_attempts: int,
    initial_delay: float,
    cpu: int,
    memory: int,
) -> None:
    # Given a type with its own defaults
    names.append("t_defaults")
    job_type(
        "t_defaults",
        timeout_seconds=30,
        retry=RetryConfig(max_attempts=5),
        resources=Resources(cpu_units=2, memory_mb=512),
    )(lambda payload, ctx: None)

    # When a request for it is turned into a job
    spec = JobCreate.model_validate({"type": "t_defaults", **request_body}).to_spec()

    # Then each option comes from the request, else the type, else the global default
    assert spec.timeout_seconds == timeout
    assert (spec.retry.max_attempts, spec.retry.initial_delay_seconds) == (
        max_attempts,
        initial_delay,
    )
    assert (spec.resources.cpu_units, spec.resources.memory_mb) == (cpu, memory)


def test_a_type_without_defaults_uses_the_global_ones(names: list[str]) -> None:
    names.append("t_plain")
    job_type("t_plain")(lambda payload, ctx: None)
    defaults = submission_defaults("t_plain")
    assert defaults.timeout_seconds == DEFAULT_TIMEOUT_SECONDS
    assert (defaults.retry, defaults.resources) == (RetryConfig(), Resources())
    spec = JobCreate.model_validate({"type": "t_plain"}).to_spec()
    assert (spec.timeout_seconds, spec.retry, spec.resources) == (300.0, RetryConfig(), Resources())


def test_a_payload_that_breaks_the_model_names_the_field(names: list[str]) -> None:
    # Given a type with a payload model
    names.append("t_model")
    job_type("t_model", payload_model=Invoice)(lambda payload, ctx: None)
    from queue_service.job_types import check_payload

    # When payloads are checked, Then a good one passes and a bad one names its fields
    check_payload("t_model", {"number": "A-1", "amount": 3})
    with pytest.raises(errors.InvalidPayload) as raised:
        check_payload("t_model", {"amount": -1})
    assert "payload.number" in raised.value.message
    assert "payload.amount" in raised.value.message
    locs = [detail["loc"] for detail in raised.value.details]
    assert ["payload", "number"] in locs and ["payload", "amount"] in locs
    # and the handler would receive the validated model
    jt = get_job_type("t_model")
    assert jt is not None
    assert jt.payload_for_handler({"number": "A-1", "amount": 3}) == Invoice(number="A-1", amount=3)


def test_job_modules_are_imported_and_a_broken_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> None:
    # Given two modules outside the package: one registers a type, one cannot import
    (tmp_path / "t_good_jobs.py").write_text(
        "from queue_service.job_types import job_type\n"
        "@job_type('t_from_module')\n"
        "def handler(payload, ctx):\n"
        "    return 1\n"
    )
    (tmp_path / "t_broken_jobs.py").write_text("import no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    names.append("t_from_module")

    # When the list is loaded, Then the good one registers its type
    assert load_job_modules(" t_good_jobs , ") == ["t_good_jobs"]
    assert get_job_type("t_from_module") is not None

    # and a broken module stops the start with its name in the error
    with pytest.raises(JobModuleImportError, match=r"'t_broken_jobs'.*no_such_module_here"):
        load_job_modules("t_good_jobs,t_broken_jobs")
    with pytest.raises(JobModuleImportError, match="'t_missing_jobs'"):
        load_job_modules("t_missing_jobs")
    for module in ("t_good_jobs", "t_broken_jobs"):
        sys.modules.pop(module, None)


def test_the_simulated_types_are_an_ordinary_job_module() -> None:
    # Given the default TASKQ_JOB_MODULES (loaded by the test session as by the processes)
    # Then the simulated types are registered like any other
    noop = get_job_type("noop")
    assert noop is not None and noop.is_async
    assert noop.handler.__module__ == "queue_service.simulated_jobs"
