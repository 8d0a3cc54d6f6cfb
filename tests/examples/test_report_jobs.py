"""The example job module (examples/report_jobs.py), run as the worker runs it.

Attempts go through `run_attempt` with a context writing to a list; the HTTP endpoint is a
local http.server on 127.0.0.1 answering from a script.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import examples.report_jobs  # noqa: F401  (registers csv_report and call_endpoint)
from actors.execution import AttemptReport, run_attempt
from queue_service import errors
from queue_service.job_context import JobContext
from queue_service.job_types import check_payload, get_job_type
from queue_service.repository.events import JobEvent
from queue_service.retry_policy import AttemptResult
from tests.support.product import free_port


def attempt(
    type_: str, payload: dict[str, Any], attempt_no: int = 1
) -> tuple[AttemptReport, list[JobEvent]]:
    jt = get_job_type(type_)
    assert jt is not None
    events: list[JobEvent] = []
    context = JobContext("job_example_1", attempt_no, sink=events.extend)
    return run_attempt(jt, payload, context, 10, lambda: False, 0.5), events


# --- csv_report ---------------------------------------------------------------------------


def test_csv_report_writes_the_rows_and_reports_progress(tmp_path: Path) -> None:
    # Given 2,500 rows to render
    rows = [{"id": n, "name": f"item {n}", "ignored": True} for n in range(2500)]
    target = tmp_path / "reports" / "items.csv"
    payload = {"output_path": str(target), "rows": rows, "columns": ["id", "name"]}

    # When the job runs
    report, events = attempt("csv_report", payload)

    # Then the file holds the chosen columns of every row, and the result says so
    assert report.result is AttemptResult.SUCCEEDED, report
    with target.open(newline="") as written:
        lines = list(csv.DictReader(written))
    assert len(lines) == 2500 and lines[7] == {"id": "7", "name": "item 7"}
    assert report.value == {"path": str(target), "rows": 2500, "bytes": target.stat().st_size}
    # and the log lines and the last progress went to the job's events
    assert [e.message for e in events if e.event == "job_log"] == [
        "rendering report",
        "report written",
    ]
    assert [e.data for e in events if e.event == "job_progress"][-1] == {
        "fraction": 1.0,
        "message": "written",
    }
    assert list(tmp_path.joinpath("reports").iterdir()) == [target]  # no partial file left


def test_csv_report_run_twice_leaves_one_report(tmp_path: Path) -> None:
    target = tmp_path / "twice.csv"
    payload = {"output_path": str(target), "rows": [{"a": 1}, {"a": 2}]}
    attempt("csv_report", payload)
    attempt("csv_report", payload, attempt_no=2)
    assert target.read_text().splitlines() == ["a", "1", "2"]


def test_csv_report_payload_is_checked_at_submission() -> None:
    with pytest.raises(errors.InvalidPayload, match=r"payload\.rows"):
        check_payload("csv_report", {"output_path": "/tmp/x.csv", "rows": []})


# --- call_endpoint ------------------------------------------------------------------------


class ScriptedEndpoint:
    """An HTTP server on 127.0.0.1 answering each request with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[dict[str, Any]] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                endpoint.requests.append(
                    {
                        "path": self.path,
                        "idempotency_key": self.headers.get("Idempotency-Key"),
                        "body": json.loads(self.rfile.read(length) or b"null"),
                    }
                )
                status = endpoint.statuses.pop(0)
                body = json.dumps({"ok": status < 400}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/invoice"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_endpoint() -> Iterator[ScriptedEndpoint]:
    with ScriptedEndpoint([503, 200]) as endpoint:
        yield endpoint


def test_call_endpoint_retries_a_5xx_then_succeeds(flaky_endpoint: ScriptedEndpoint) -> None:
    # Given an endpoint that answers 503, then 200
    payload = {"url": flaky_endpoint.url, "json_body": {"invoice": "A-1"}}

    # When the first attempt runs, Then it fails in a way worth retrying
    first, _ = attempt("call_endpoint", payload)
    assert (first.result, first.error) == (
        AttemptResult.RETRYABLE_ERROR,
        f"RetryableJobError: 503 from {flaky_endpoint.url}",
    )

    # When the queue runs the second attempt, Then it succeeds with the answer
    second, _ = attempt("call_endpoint", payload, attempt_no=2)
    assert second == AttemptReport(
        AttemptResult.SUCCEEDED, value={"status": 200, "body": {"ok": True}}
    )
    # and both requests carried the body and the job id as idempotency key
    assert [r["idempotency_key"] for r in flaky_endpoint.requests] == ["job_example_1"] * 2
    assert [r["body"] for r in flaky_endpoint.requests] == [{"invoice": "A-1"}] * 2


def test_call_endpoint_fails_at_once_on_a_4xx() -> None:
    with ScriptedEndpoint([422]) as endpoint:
        report, _ = attempt("call_endpoint", {"url": endpoint.url})
    assert report.result is AttemptResult.PERMANENT_ERROR
    assert report.error is not None and report.error.startswith("EndpointRefused: 422")


def test_call_endpoint_retries_when_nothing_listens() -> None:
    report, _ = attempt("call_endpoint", {"url": f"http://127.0.0.1:{free_port()}/x"})
    assert report.result is AttemptResult.RETRYABLE_ERROR
    assert report.error is not None and "ConnectError" in report.error
