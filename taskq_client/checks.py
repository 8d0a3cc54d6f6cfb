"""Reading what happened from jobs and their logs: pure functions over the API's JSON.

Shared by `taskq scenarios run` and the end-to-end tests. Jobs and log entries are
mappings as the API sends them (or `model_dump()` of the client's models): timestamps may
be ISO strings or datetimes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Check:
    """One expected behaviour, what was observed, and whether it held."""

    expectation: str
    evidence: str
    passed: bool


def as_datetime(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def seconds_between(earlier: datetime | str, later: datetime | str) -> float:
    return (as_datetime(later) - as_datetime(earlier)).total_seconds()


def overlap(*jobs: Record) -> bool:
    """The jobs' [started_at, finished_at] intervals share a moment."""
    return max(as_datetime(j["started_at"]) for j in jobs) < min(
        as_datetime(j["finished_at"]) for j in jobs
    )


def dependency_order_violations(specs: Sequence[Record], jobs: Mapping[str, Record]) -> list[str]:
    """Why the submitted `specs` did not all complete in dependency order (empty: they did):
    every job completed, and started only after each of its dependencies finished."""
    problems = []
    for spec in specs:
        job = jobs[spec["job_id"]]
        if job["status"] != "completed":
            problems.append(f"{job['job_id']} is {job['status']}")
            continue
        for parent in spec.get("depends_on", []):
            if jobs[parent]["status"] != "completed":
                problems.append(f"{parent} is {jobs[parent]['status']}")
            elif as_datetime(job["started_at"]) < as_datetime(jobs[parent]["finished_at"]):
                problems.append(f"{job['job_id']} started before {parent} finished")
    return problems


def transitions(events: Iterable[Record]) -> list[tuple[str | None, str]]:
    """The job's status changes, in order, from its log (`job_<status>` events; a
    handler's own log lines are other events)."""
    return [
        (e["data"].get("previous_status"), e["data"]["status"])
        for e in events
        if e["event"] == f"job_{e['data'].get('status')}"
    ]


def attempt_starts(events: Iterable[Record]) -> dict[int, datetime]:
    """When each attempt started running; an attempt that started twice is an error."""
    starts = [e for e in events if e["event"] == "job_running"]
    if len(starts) != len({e["attempt"] for e in starts}):
        raise ValueError("an attempt started twice")
    return {e["attempt"]: as_datetime(e["at"]) for e in starts}


def attempt_ends(events: Iterable[Record]) -> dict[int, Record]:
    """The event recording how each attempt ended (running -> something)."""
    return {e["attempt"]: e for e in events if e["data"].get("previous_status") == "running"}


def expected_delay(retry_config: Record, attempt: int) -> float:
    """SPEC: delay before attempt n+1 = min(initial x multiplier^(n-1), max), before jitter."""
    return float(
        min(
            retry_config["initial_delay_seconds"]
            * retry_config["backoff_multiplier"] ** (attempt - 1),
            retry_config["max_delay_seconds"],
        )
    )


def peak_usage(jobs: Iterable[Record]) -> tuple[int, int]:
    """Peak CPU and memory over running jobs, from started_at/finished_at (interval sweep)."""
    points = []
    for job in jobs:
        need = job["resource_requirements"]
        # At equal instants an end sorts before a start: the tokens were handed over.
        points.append((as_datetime(job["started_at"]), 1, need["cpu_units"], need["memory_mb"]))
        points.append((as_datetime(job["finished_at"]), 0, -need["cpu_units"], -need["memory_mb"]))
    cpu = memory = peak_cpu = peak_memory = 0
    for _, _, d_cpu, d_memory in sorted(points, key=lambda p: p[:2]):
        cpu, memory = cpu + d_cpu, memory + d_memory
        peak_cpu, peak_memory = max(peak_cpu, cpu), max(peak_memory, memory)
    return peak_cpu, peak_memory


@dataclass(frozen=True)
class TokenUsage:
    peak_cpu: int
    peak_memory: int
    grants: int
    releases: int
    held_at_end: tuple[int, int]


def token_usage(logs: Mapping[str, Sequence[Record]]) -> TokenUsage:
    """Replay the `tokens_granted` / `tokens_released` events of the jobs' logs in time
    order (a release before a grant at the same instant: one admission step returns
    tokens before it hands them out) and report the peak held by these jobs."""
    events = [
        (as_datetime(e["at"]), 0 if e["event"] == "tokens_released" else 1, e)
        for items in logs.values()
        for e in items
        if e["event"] in ("tokens_granted", "tokens_released")
    ]
    cpu = memory = peak_cpu = peak_memory = grants = releases = 0
    for _, granted, event in sorted(events, key=lambda t: t[:2]):
        sign = 1 if granted else -1
        grants, releases = grants + granted, releases + (1 - granted)
        cpu += sign * int(event["data"]["cpu_units"])
        memory += sign * int(event["data"]["memory_mb"])
        peak_cpu, peak_memory = max(peak_cpu, cpu), max(peak_memory, memory)
    return TokenUsage(peak_cpu, peak_memory, grants, releases, (cpu, memory))


def first_event_at(events: Iterable[Record], name: str) -> datetime | None:
    for event in events:
        if event["event"] == name:
            return as_datetime(event["at"])
    return None
