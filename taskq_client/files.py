"""Reading the jobs of a file for `taskq submit`: pure, no I/O beyond the text given.

Accepted shapes: one job object; a list of jobs; `{"jobs": [...]}`, which is also the
shape of the case study's scenario files (their other keys, such as `description` and
`expected`, are ignored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class JobFileError(ValueError):
    """The file holds no jobs in a shape `taskq submit` reads."""


@dataclass(frozen=True)
class JobFile:
    jobs: list[dict[str, Any]]
    description: str | None = None

    @property
    def has_dependencies(self) -> bool:
        """Some job depends on another: the jobs must go as one batch (a dependency named
        in the same submission exists only inside a batch)."""
        return any(job.get("depends_on") for job in self.jobs)


def parse_jobs(data: Any) -> JobFile:
    """The jobs of an already decoded JSON document."""
    description = None
    if isinstance(data, dict) and "jobs" in data:
        description = data.get("description")
        data = data["jobs"]
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise JobFileError('expected a job object, a non-empty list of jobs or {"jobs": [...]}')
    for index, job in enumerate(data):
        if not isinstance(job, dict):
            raise JobFileError(f"job {index} is a {type(job).__name__}, not an object")
    return JobFile(jobs=[dict(job) for job in data], description=description)


def parse_job_text(text: str) -> JobFile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise JobFileError(f"not JSON: {error}") from error
    return parse_jobs(data)
