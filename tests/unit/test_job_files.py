"""`taskq submit FILE`: the shapes of job files it reads."""

from __future__ import annotations

import json

import pytest

from taskq_client.files import JobFileError, parse_job_text, parse_jobs
from tests.support.product import ROOT

SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("[0-9b]*.json"))


def test_one_job_object_is_one_job() -> None:
    parsed = parse_jobs({"type": "send_email", "payload": {"to": "a@example.com"}})
    assert parsed.jobs == [{"type": "send_email", "payload": {"to": "a@example.com"}}]
    assert not parsed.has_dependencies


def test_a_list_and_a_jobs_object_are_the_same_jobs() -> None:
    jobs = [{"job_id": "a"}, {"job_id": "b", "depends_on": ["a"]}]
    assert parse_jobs(jobs).jobs == parse_jobs({"jobs": jobs}).jobs == jobs
    assert parse_jobs(jobs).has_dependencies


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_scenario_file_reads_as_it_is_its_extra_keys_ignored(path) -> None:  # type: ignore[no-untyped-def]
    # Given a case-study scenario file, with description, expected, capacity...
    document = json.loads(path.read_text())

    # When it is read
    parsed = parse_job_text(path.read_text())

    # Then its jobs are exactly the file's, and it goes as a batch when one has depends_on
    assert parsed.jobs == document["jobs"]
    assert parsed.description == document["description"]
    assert parsed.has_dependencies == any(j.get("depends_on") for j in document["jobs"])


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"jobs": []}', '"a string"', "[1, 2]", '{"jobs": {"a": 1}}'],
)
def test_what_holds_no_jobs_is_an_error(text: str) -> None:
    with pytest.raises(JobFileError):
        parse_job_text(text)
