"""Handlers of your own (SPEC "Job handlers of your own"), end to end.

A job module written outside the repository is put on PYTHONPATH and listed in
TASKQ_JOB_MODULES, as a user would do; the real api and worker import it at start.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.product import Product, wait_until

StartProduct = Callable[..., Product]  # the start_product fixture

USER_MODULE = '''
"""A team's own jobs, outside the product's repository."""
import time
from pathlib import Path

from pydantic import BaseModel, Field

from queue_service.job_types import job_type
from queue_service.model import RetryConfig


class AppendLine(BaseModel):
    path: str
    line: str = Field(min_length=1)


class LineRefused(Exception):
    """Nothing a retry would change."""


@job_type(
    "acme_append",
    payload_model=AppendLine,
    timeout_seconds=20,
    retry=RetryConfig(max_attempts=3, initial_delay_seconds=0.1),
    non_retryable=(LineRefused,),
    description="appends a line to a file",
)
def append_line(payload: AppendLine, ctx):
    ctx.logger.info("appending", path=payload.path)
    ctx.progress(0.5, "writing")
    if payload.line == "refuse":
        raise LineRefused("this line is refused")
    with open(payload.path, "a") as out:
        out.write(payload.line + "\\n")
    ctx.logger.info("appended", attempt=ctx.attempt)
    return {"lines": len(Path(payload.path).read_text().splitlines())}


@job_type("acme_busy", timeout_seconds=1, retry=RetryConfig(max_attempts=1))
def busy(payload, ctx):
    with open(payload["path"], "a") as out:
        out.write("started\\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # never looks at ctx.should_stop()
        time.sleep(0.05)
    with open(payload["path"], "a") as out:
        out.write("finished\\n")
'''


@pytest.fixture
def own_product(start_product: StartProduct, tmp_path: Path) -> Product:
    """The product with the user's module (outside the repository) on its module list."""
    library = tmp_path / "acme_library"
    library.mkdir()
    (library / "acme_jobs.py").write_text(textwrap.dedent(USER_MODULE))
    path = os.pathsep.join(p for p in (str(library), os.environ.get("PYTHONPATH")) if p)
    return start_product(
        workers=1,
        threads=4,
        TASKQ_JOB_MODULES="queue_service.simulated_jobs,acme_jobs",
        PYTHONPATH=path,
    )


def logs(product: Product, job_id: str) -> list[dict[str, Any]]:
    response = product.http.get(f"/jobs/{job_id}/logs")
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_a_sync_handler_from_a_module_of_your_own(own_product: Product, tmp_path: Path) -> None:
    # Given the user's module loaded by api and worker, listed with its defaults
    types = {t["type"]: t for t in own_product.http.get("/job-types").json()["items"]}
    assert {"acme_append", "acme_busy", "noop"} <= set(types)
    append = types["acme_append"]
    assert append["timeout_seconds"] == 20
    assert append["retry_config"]["max_attempts"] == 3
    assert append["non_retryable"] == ["acme_jobs.LineRefused"]
    assert set(append["payload_schema"]["properties"]) == {"path", "line"}

    # When a job of it is submitted without options
    target = tmp_path / "out.txt"
    job_id = own_product.submit(
        {"type": "acme_append", "payload": {"path": str(target), "line": "hello"}}
    )["job_id"]
    job = own_product.wait_for_status(job_id, {"completed", "failed"})

    # Then it completed with the handler's result, the type's defaults applied
    assert job["status"] == "completed", job
    assert job["result"] == {"lines": 1}
    assert (job["timeout_seconds"], job["retry_config"]["max_attempts"]) == (20, 3)
    # and its progress and log lines are served
    assert job["progress"]["fraction"] == 0.5
    assert job["progress"]["message"] == "writing"
    lines = [(e["level"], e["message"], e["data"]) for e in logs(own_product, job_id)]
    assert ("info", "appending", {"path": str(target)}) in lines
    assert ("info", "appended", {"attempt": 1}) in lines
    # and its side effect happened once
    assert target.read_text() == "hello\n"


def test_a_payload_that_breaks_the_model_is_refused(own_product: Product, tmp_path: Path) -> None:
    # When payloads breaking the type's model are submitted, alone or in a batch
    single = own_product.http.post(
        "/jobs", json={"type": "acme_append", "payload": {"path": "/tmp/x", "line": ""}}
    )
    batch = own_product.http.post(
        "/jobs/batch",
        json={"jobs": [{"type": "noop"}, {"type": "acme_append", "payload": {"line": "x"}}]},
    )

    # Then each is a 422 naming the field, and nothing is stored
    assert single.status_code == 422, single.text
    error = single.json()["error"]
    assert error["code"] == "invalid_payload"
    assert "payload.line" in error["message"]
    assert error["details"][0]["loc"] == ["payload", "line"]
    assert batch.status_code == 422, batch.text
    assert "payload.path" in batch.json()["error"]["message"]
    assert own_product.http.get("/jobs").json()["items"] == []


def test_a_non_retryable_exception_fails_at_once_with_its_traceback(
    own_product: Product, tmp_path: Path
) -> None:
    # When the handler raises an exception its type declares non-retryable
    job_id = own_product.submit(
        {"type": "acme_append", "payload": {"path": str(tmp_path / "r.txt"), "line": "refuse"}}
    )["job_id"]
    job = own_product.wait_for_status(job_id, {"completed", "failed"})

    # Then the job failed on its first attempt of three
    assert (job["status"], job["attempts"]) == ("failed", 1), job
    assert job["last_error"] == "LineRefused: this line is refused"
    # and the traceback, down to the raise in the user's module, is in its logs
    tracebacks = [
        e["data"]["traceback"] for e in logs(own_product, job_id) if e["level"] == "error"
    ]
    assert len(tracebacks) == 1
    assert "acme_jobs.py" in tracebacks[0]
    assert 'raise LineRefused("this line is refused")' in tracebacks[0]


def test_a_sync_handler_over_its_time_limit_is_stopped_and_not_run_again(
    own_product: Product, tmp_path: Path
) -> None:
    # Given a sync handler that works for 30 s and ignores the stop request, limit 1 s
    marks = tmp_path / "busy.txt"
    started = time.monotonic()
    job_id = own_product.submit({"type": "acme_busy", "payload": {"path": str(marks)}})["job_id"]

    # When it runs, Then it is stopped at its limit and fails (one attempt allowed)
    job = own_product.wait_for_status(job_id, {"completed", "failed"}, timeout=20)
    assert job["status"] == "failed", job
    assert job["last_error"] == "timed out after 1 s"
    assert time.monotonic() - started < 10
    # and the worker's thread is free: another job runs right after
    noop = own_product.submit({"type": "noop"})["job_id"]
    assert own_product.wait_for_status(noop, {"completed"}, timeout=10)["status"] == "completed"
    # and the handler ran once and never got to finish, even after a lease lifetime
    # (TASKQ_LEASE_TTL_SECONDS=3) and a few maintenance ticks
    wait_until(lambda: time.monotonic() - started > 5, 10, 0.2, "a lease lifetime to pass")
    assert marks.read_text() == "started\n"
    assert own_product.job(job_id)["attempts"] == 1
