"""The client's pure parts: retry decisions, errors, addresses, key file, packaging."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx
import pytest

from taskq_client import calls
from taskq_client.checks import peak_usage, token_usage
from taskq_client.client import TaskQueueClient, stream_url
from taskq_client.config import KEY_FILE, resolve_key
from taskq_client.errors import ConnectionFailed, Invalid, NotFound, Unavailable, api_error
from taskq_client.retrying import RetryPolicy
from tests.support.product import ROOT

FAST = RetryPolicy(attempts=3, initial_delay=0.001, max_delay=0.001)


def test_backoff_doubles_up_to_its_ceiling_and_retry_after_wins() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=2, max_delay=3)
    assert [policy.delay(n, rand=1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, retry_after="7") == 7.0
    assert policy.delay(1, retry_after="9999") == policy.max_retry_after
    assert policy.delay(2, retry_after="Wed, 21 Oct 2015 07:28:00 GMT", rand=1.0) == 1.0


def test_api_errors_keep_the_apis_body() -> None:
    body = {
        "error": {
            "code": "dependency_cycle",
            "message": "a -> b -> a",
            "details": {"cycle": ["a", "b", "a"]},
        }
    }
    error = api_error(422, body)
    assert isinstance(error, Invalid)
    assert (error.code, error.message, error.details) == (
        "dependency_cycle",
        "a -> b -> a",
        {"cycle": ["a", "b", "a"]},
    )
    assert isinstance(api_error(404, {"error": {"code": "job_not_found", "message": ""}}), NotFound)
    assert api_error(502, None, "<html>bad gateway</html>").code == "http_error"


def _client(handler) -> TaskQueueClient:  # type: ignore[no-untyped-def]
    http = httpx.Client(base_url="http://taskq.test", transport=httpx.MockTransport(handler))
    return TaskQueueClient(http=http, retry=FAST)


def test_a_503_is_retried_with_the_same_idempotency_key() -> None:
    # Given an API that answers 503 twice, then accepts
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key"))
        if len(seen) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"error": {"code": "unavailable", "message": "db"}},
            )
        return httpx.Response(
            201,
            json={
                "job_id": "j1",
                "status": "pending",
                "created_at": "2024-01-01T00:00:00Z",
                "priority": "normal",
                "position_in_queue": 0,
            },
        )

    # When a job is submitted
    accepted = _client(handler).submit({"type": "noop"})

    # Then it is accepted on the third try, each try with the same generated key
    assert accepted.job_id == "j1" and accepted.created
    assert len(seen) == 3 and seen[0] is not None and len(set(seen)) == 1


def test_a_503_that_persists_is_raised() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"code": "unavailable", "message": "db down"}})

    with pytest.raises(Unavailable):
        _client(handler).get_job("j1")


def test_a_lost_answer_is_not_resent_for_a_call_that_is_not_idempotent() -> None:
    calls_made = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls_made.append(request.url.path)
        raise httpx.ReadError("connection reset", request=request)

    with pytest.raises(ConnectionFailed):
        _client(handler).cancel("j1")
    assert calls_made == ["/jobs/j1/cancel"]
    with pytest.raises(ConnectionFailed):
        _client(handler).get_job("j1")
    assert len(calls_made) == 1 + FAST.attempts


def test_a_batch_gets_ids_and_keys_so_a_resent_batch_is_recognised() -> None:
    prepared = calls.prepare_batch([{"type": "noop"}, {"job_id": "mine"}], auto_keys=True)
    assert re.fullmatch(r"job_[0-9a-z]{26}", prepared[0]["job_id"])
    assert prepared[1]["job_id"] == "mine"
    assert all(job["idempotency_key"] for job in prepared)


@pytest.mark.parametrize(("status", "created"), [(201, True), (200, False)])
def test_a_batch_answer_says_whether_the_jobs_are_new(status: int, created: bool) -> None:
    # Given the api's answer to a batch: 201 stored now, 200 stored before (sent again)
    item = {"job_id": "j1", "status": "pending", "created_at": "2026-12-07T16:00:00Z"}
    response = httpx.Response(status, json={"items": [{**item, "priority": "normal"}]})

    # Then every accepted job says so
    (accepted,) = calls.submit_batch([{"job_id": "j1"}]).read(response)
    assert (accepted.job_id, accepted.created) == ("j1", created)


def test_stream_address_carries_the_filters() -> None:
    assert stream_url("http://h:1/", {"job_id": ["a", "b"], "type": None}) == (
        "ws://h:1/jobs/stream?job_id=a&job_id=b"
    )
    assert stream_url("https://h", {"status": "failed"}) == "wss://h/jobs/stream?status=failed"


def test_the_key_comes_from_the_option_else_the_nearest_key_file(tmp_path: Path) -> None:
    # Given a repository with a key file at its root, and a directory inside it
    (tmp_path / ".git").mkdir()
    (tmp_path / KEY_FILE).parent.mkdir()
    (tmp_path / KEY_FILE).write_text("root-key\n")
    inside = tmp_path / "a" / "b"
    inside.mkdir(parents=True)
    elsewhere = tmp_path / "checkout"
    # Then the option wins, else the file found walking up to the repository root
    assert resolve_key("given", inside, elsewhere) == "given"
    assert resolve_key(None, inside, elsewhere) == "root-key"
    assert resolve_key(None, elsewhere, elsewhere) == "root-key"
    assert resolve_key(None, Path("/"), elsewhere) is None


def test_token_events_replay_to_their_peak() -> None:
    def event(at: str, name: str, cpu: int) -> dict[str, object]:
        return {
            "at": f"2024-01-01T00:00:{at}+00:00",
            "event": name,
            "data": {"cpu_units": cpu, "memory_mb": cpu * 100},
        }

    logs = {
        "a": [event("00", "tokens_granted", 4), event("02", "tokens_released", 4)],
        "b": [event("00", "tokens_granted", 4), event("01", "tokens_released", 4)],
        # granted at the instant b released: handed over, not on top
        "c": [event("01", "tokens_granted", 4), event("03", "tokens_released", 4)],
    }
    usage = token_usage(logs)
    assert (usage.peak_cpu, usage.peak_memory, usage.grants, usage.releases) == (8, 800, 3, 3)
    assert usage.held_at_end == (0, 0)
    jobs = [
        {
            "started_at": "2024-01-01T00:00:00+00:00",
            "finished_at": "2024-01-01T00:00:01+00:00",
            "resource_requirements": {"cpu_units": 3, "memory_mb": 1},
        },
        {
            "started_at": "2024-01-01T00:00:01+00:00",
            "finished_at": "2024-01-01T00:00:02+00:00",
            "resource_requirements": {"cpu_units": 5, "memory_mb": 1},
        },
    ]
    assert peak_usage(jobs) == (5, 1)


def test_the_package_depends_on_the_runtime_pins_of_requirements_txt() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = (ROOT / "requirements.txt").read_text().split("# Runtime\n", 1)[1].splitlines()
    runtime = []
    for line in lines:
        if line.startswith("#"):
            break
        if line.strip():
            runtime.append(line.strip())
    assert sorted(pyproject["project"]["dependencies"]) == sorted(runtime)
    assert pyproject["project"]["scripts"]["taskq"] == "taskq_client.cli:app"
