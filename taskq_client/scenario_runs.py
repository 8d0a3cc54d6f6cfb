"""`taskq scenarios run`: each case-study scenario run against a live system and checked.

Every scenario's job ids get a per-run prefix, so runs never collide with earlier ones or
with other jobs. Each run returns one `Check` per entry of the scenario's `expected` list,
decided from the jobs' recorded timestamps and logs (`checks.py`).
"""

from __future__ import annotations

import copy
import itertools
import json
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from taskq_client.checks import (
    Check,
    as_datetime,
    attempt_ends,
    attempt_starts,
    dependency_order_violations,
    expected_delay,
    first_event_at,
    overlap,
    peak_usage,
    seconds_between,
    token_usage,
    transitions,
)
from taskq_client.client import TaskQueueClient
from taskq_client.errors import Invalid, NotFound, TaskQueueError

Jobs = dict[str, dict[str, Any]]
Logs = dict[str, list[dict[str, Any]]]
JITTER_RATIO = 0.1  # the product's default retry jitter
LATENCY_MARGIN = 1.5  # seconds: maintenance tick, admission, publishing on a busy machine


@dataclass
class Run:
    """One scenario's run: the client, the id prefix, and how long to wait."""

    client: TaskQueueClient
    tag: str
    quick: bool
    timeout: float

    def tagged(self, jobs: Sequence[Mapping[str, Any]], variant: str = "") -> list[dict[str, Any]]:
        """The jobs with prefixed ids (generated from their index and type when absent)."""
        prefix = f"{self.tag}{variant}."
        renamed = {}
        out = []
        for index, job in enumerate([dict(j) for j in copy.deepcopy(list(jobs))]):
            original = (
                job.get("job_id")
                or f"{index}_{job.get('type', 'noop')}_{job.get('priority', 'normal')}"
            )
            renamed[original] = job["job_id"] = prefix + original
            out.append(job)
        for job in out:
            job["depends_on"] = [renamed.get(d, d) for d in job.get("depends_on", [])]
        return out

    def settle(self, job_ids: Sequence[str]) -> tuple[Jobs, Logs]:
        """Wait for the jobs to end; their JSON and their logs."""
        jobs = self.client.wait(job_ids, timeout=self.timeout, interval=0.2)
        logs = {job_id: [e.model_dump() for e in self.client.logs(job_id)] for job_id in job_ids}
        return {i: j.model_dump() for i, j in jobs.items()}, logs

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The scheduler paused for the block (jobs submitted meanwhile are all ready at
        once when it resumes), resumed however the block ends."""
        self.client.pause()
        try:
            yield
        finally:
            self.client.resume()


def _offsets(jobs: Jobs, ids: Sequence[str], field: str) -> str:
    origin = min(as_datetime(jobs[i][field]) for i in ids)
    return ", ".join(
        f"{_short(i)} +{seconds_between(origin, jobs[i][field]):.3f}s"
        for i in sorted(ids, key=lambda i: as_datetime(jobs[i][field]))
    )


def _short(job_id: str) -> str:
    return job_id.split(".", 1)[-1]


def _order(jobs: Jobs, ids: Sequence[str], field: str) -> list[str]:
    return sorted(ids, key=lambda i: as_datetime(jobs[i][field]))


# --- scenario 1 --------------------------------------------------------------------------


def basic_flow(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    """Submitted while paused, so all three are ready when the scheduler resumes. When the
    pool has room for all of them, one admission step starts them together and they run
    concurrently: then "first" is the queue and admission order, and the start and finish
    times are shown, not judged."""
    bodies = run.tagged(scenario["jobs"])
    with run.paused():
        accepted = [run.client.submit(body) for body in bodies]
    ids = [a.job_id for a in accepted]
    jobs, logs = run.settle(ids)
    by_priority = sorted(ids, key=lambda i: RANK[jobs[i]["priority"]])
    critical = by_priority[0]
    position = {a.job_id: a.position_in_queue for a in accepted}
    positions = ", ".join(f"{_short(i)} {position[i]}" for i in ids)
    all_done = all(jobs[i]["status"] == "completed" for i in ids)
    granted = {i: _event_at(logs[i], "tokens_granted") for i in ids}
    steps = len(set(granted.values()))
    admitted = (
        "all admitted in one step (the pool had room for all)"
        if steps == 1
        else f"admitted in {steps} steps: {_offsets_of(granted, ids)}"
    )
    # Started before the critical job, without having been admitted together with it.
    overtaken = [
        i
        for i in ids
        if all_done
        and granted[i] != granted[critical]
        and as_datetime(jobs[i]["started_at"]) < as_datetime(jobs[critical]["started_at"])
    ]
    out_of_order = [
        f"{_short(b)} before {_short(a)}"
        for n, a in enumerate(by_priority)
        for b in by_priority[n + 1 :]
        if RANK[jobs[a]["priority"]] < RANK[jobs[b]["priority"]]
        and (
            granted[b] < granted[a]
            or (
                all_done
                and not overlap(jobs[a], jobs[b])
                and jobs[b]["started_at"] < jobs[a]["started_at"]
            )
        )
    ]
    token_problems = []
    for i in ids:
        need = jobs[i]["resource_requirements"]
        for name in ("tokens_granted", "tokens_released"):
            seen = [e["data"] for e in logs[i] if e["event"] == name]
            if seen != [need]:
                token_problems.append(f"{_short(i)} {name} {seen} (needs {need})")
    stats = run.client.stats()["tokens"]
    return [
        Check(
            "critical first",
            f"queue positions at submission while paused: {positions}; {admitted}; "
            f"started: {_offsets(jobs, ids, 'started_at')}",
            all_done
            and position[critical] == 0
            and granted[critical] == min(granted.values())
            and not overtaken,
        ),
        Check(
            "priority order",
            f"admission in priority order; finished: {_offsets(jobs, ids, 'finished_at')}"
            + ("; jobs admitted together ran concurrently" if steps < len(ids) else "")
            + (f"; out of order: {out_of_order}" if out_of_order else ""),
            all_done and not out_of_order,
        ),
        Check(
            "resources tracked",
            "each job granted and released exactly its requirements once"
            + (f"; problems: {token_problems}" if token_problems else "")
            + f"; pool now {stats['cpu_units']['used']} CPU / {stats['memory_mb']['used']} MB used",
            all_done and not token_problems,
        ),
    ]


def _offsets_of(times: Mapping[str, datetime], ids: Sequence[str]) -> str:
    origin = min(times[i] for i in ids)
    return ", ".join(
        f"{_short(i)} +{(times[i] - origin).total_seconds():.3f}s"
        for i in sorted(ids, key=times.__getitem__)
    )


RANK = {"critical": 0, "high": 1, "normal": 2, "low": 3}


# --- scenario 2 --------------------------------------------------------------------------


def dependencies(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    bodies = run.tagged(scenario["jobs"])
    ids = [b["job_id"] for b in bodies]
    with run.paused():
        run.client.submit_batch(bodies)
        waiting = {i: run.client.get_job(i) for i in ids}
    jobs, logs = run.settle(ids)
    order_problems = dependency_order_violations(bodies, jobs)
    state_problems = []
    for body in bodies:
        job = waiting[body["job_id"]]
        want = ("blocked", "dependencies") if body["depends_on"] else ("pending", "paused")
        if (job.status, job.waiting_reason) != want or job.blocked_by != body["depends_on"]:
            state_problems.append(f"{_short(job.job_id)} {job.status}/{job.waiting_reason}")
        expected_path = [(None, "pending"), ("pending", "running"), ("running", "completed")]
        if body["depends_on"]:
            expected_path = [(None, "blocked"), ("blocked", "pending"), *expected_path[1:]]
        path = transitions(logs[body["job_id"]])
        if path != expected_path:
            state_problems.append(f"{_short(body['job_id'])} went {path}")
    states = ", ".join(
        f"{_short(i)} {w.status} ({w.waiting_reason}, blocked by "
        f"{[_short(b) for b in w.blocked_by]})"
        for i, w in waiting.items()
    )

    failing = run.tagged(scenario["jobs"], variant="f")
    failing[0]["payload"] = {**failing[0].get("payload", {}), "error": "injected_failure"}
    run.client.submit_batch(failing)
    failed, _ = run.settle([b["job_id"] for b in failing])
    root = failing[0]["job_id"]
    cascade = []
    for body in failing[1:]:
        child = failed[body["job_id"]]
        if (
            child["status"] != "cancelled"
            or not str(child["cancel_reason"]).startswith("upstream_failed:")
            or child["started_at"] is not None
            or child["attempts"] != 0
        ):
            cascade.append(
                f"{_short(body['job_id'])} {child['status']}, {child['attempts']} attempts"
            )
    return [
        Check(
            "dependency order",
            f"started: {_offsets(jobs, ids, 'started_at')}; "
            + ("; ".join(order_problems) or "each started after its parent finished"),
            not order_problems,
        ),
        Check(
            "parent failure",
            f"variant with {_short(root)} failing: it is {failed[root]['status']}; "
            + ", ".join(
                f"{_short(b['job_id'])} {failed[b['job_id']]['status']} "
                f"({failed[b['job_id']]['cancel_reason']}, "
                f"{failed[b['job_id']]['attempts']} attempts)"
                for b in failing[1:]
            ),
            failed[root]["status"] == "failed" and not cascade,
        ),
        Check(
            "blocked vs ready",
            f"while paused: {states}; "
            + ("; ".join(state_problems) or "logs: blocked -> pending -> running -> completed"),
            not state_problems,
        ),
    ]


# --- scenario 3 --------------------------------------------------------------------------


def dag(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    bodies = run.tagged(scenario["jobs"])
    ids = [b["job_id"] for b in bodies]
    run.client.submit_batch(bodies)
    jobs, _ = run.settle(ids)
    problems = dependency_order_violations(bodies, jobs)
    # Jobs with the same dependencies are independent branches: they must overlap.
    siblings: dict[tuple[str, ...], list[str]] = {}
    for body in bodies:
        siblings.setdefault(tuple(sorted(body["depends_on"])), []).append(body["job_id"])
    groups = [g for g in siblings.values() if len(g) > 1]
    done = not problems
    parallel = [(g, done and overlap(*(jobs[i] for i in g))) for g in groups]
    return [
        Check(
            "dependency order",
            f"started: {_offsets(jobs, ids, 'started_at')}; "
            + ("; ".join(problems) or "each after all its dependencies finished"),
            not problems,
        ),
        Check(
            "parallel branches",
            "; ".join(
                f"{' and '.join(_short(i) for i in g)} "
                + ("overlapped" if ok else "did not overlap")
                + (f" ({_offsets(jobs, g, 'started_at')})" if done else "")
                for g, ok in parallel
            ),
            bool(parallel) and all(ok for _, ok in parallel),
        ),
    ]


def _event_at(events: Sequence[Mapping[str, Any]], name: str) -> datetime:
    at = first_event_at(events, name)
    if at is None:
        raise ValueError(f"no {name} event in the job's log")
    return at


# --- scenario 4 --------------------------------------------------------------------------


def resources(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    bodies = run.tagged(scenario["jobs"])
    ids = [b["job_id"] for b in bodies]
    tokens = run.client.stats()["tokens"]
    cpu_cap, mem_cap = tokens["cpu_units"]["capacity"], tokens["memory_mb"]["capacity"]
    with run.paused():
        for body in bodies:
            run.client.submit(body)
    jobs, logs = run.settle(ids)
    all_done = all(jobs[i]["status"] == "completed" for i in ids)
    usage = token_usage(logs)
    peak_cpu, peak_mem = peak_usage(jobs.values()) if all_done else (0, 0)
    granted = {i: _event_at(logs[i], "tokens_granted") for i in ids}
    released = {i: _event_at(logs[i], "tokens_released") for i in ids}
    pending = {i: _event_at(logs[i], "job_pending") for i in ids}
    high = [i for i in ids if jobs[i]["priority"] in ("critical", "high")]
    lower = [i for i in ids if i not in high]
    big = max(jobs[i]["resource_requirements"]["cpu_units"] for i in ids)
    heavy = [i for i in ids if jobs[i]["resource_requirements"]["cpu_units"] == big]
    light = [i for i in ids if i not in heavy]
    gap_fillers = sorted(
        _short(li) for li in light if any(granted[h] <= granted[li] < released[h] for h in heavy)
    )
    origin = min(granted.values())
    last_high = max(granted[i] for i in high)
    first_lower = min(granted[i] for i in lower)
    waits = {i: seconds_between(pending[i], granted[i]) for i in ids}
    longest = max(waits, key=waits.__getitem__)
    return [
        Check(
            "capacity",
            f"capacity {cpu_cap} CPU / {mem_cap} MB; token events replayed: peak "
            f"{usage.peak_cpu} CPU / {usage.peak_memory} MB, {usage.grants} grants, "
            f"{usage.releases} releases; running intervals: peak {peak_cpu} CPU / {peak_mem} MB",
            all_done
            and usage.peak_cpu <= cpu_cap
            and usage.peak_memory <= mem_cap
            and peak_cpu <= cpu_cap
            and peak_mem <= mem_cap
            and usage.grants == usage.releases == len(ids),
        ),
        Check(
            "priority first",
            f"high-priority {', '.join(_short(i) for i in high)} granted tokens by "
            f"+{seconds_between(origin, last_high):.3f}s, the first lower-priority job at "
            f"+{seconds_between(origin, first_lower):.3f}s",
            all_done and last_high <= first_lower,
        ),
        Check(
            "backfill",
            f"light jobs granted tokens while a heavy job held its own: "
            f"{', '.join(gap_fillers) or 'none'}",
            all_done and bool(gap_fillers),
        ),
        Check(
            "no starvation",
            f"all {len(ids)} admitted and completed: {all_done}; longest wait for tokens "
            f"{waits[longest]:.2f}s ({_short(longest)})",
            all_done,
        ),
    ]


# --- scenario 5 --------------------------------------------------------------------------


def shrink_timeouts(jobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A job that runs into its time limit (will_timeout: 300 s of work under 60 s) made to
    do 3 s of work under a 0.5 s limit: the same behaviour in seconds, not minutes."""
    out = [dict(j) for j in copy.deepcopy(list(jobs))]
    for job in out:
        work = job.get("payload", {}).get("duration_seconds")
        limit = job.get("timeout_seconds")
        if work is not None and limit is not None and work > limit:
            job["payload"]["duration_seconds"] = 3
            job["timeout_seconds"] = 0.5
    return out


def _backoff_evidence(job: Mapping[str, Any], events: list[dict[str, Any]]) -> tuple[str, bool]:
    starts, ends = attempt_starts(events), attempt_ends(events)
    parts, ok = [], True
    for attempt in sorted(ends):
        if attempt + 1 not in starts:
            continue
        delay = expected_delay(job["retry_config"], attempt)
        gap = seconds_between(ends[attempt]["at"], starts[attempt + 1])
        ok = ok and delay <= gap + 1e-3 and gap <= delay * (1 + JITTER_RATIO) + LATENCY_MARGIN
        parts.append(f"attempt {attempt + 1} after {gap:.2f}s (backoff {delay:g}s)")
    return ", ".join(parts) or "no retry", ok


def failures(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    source = shrink_timeouts(scenario["jobs"]) if run.quick else scenario["jobs"]
    bodies = run.tagged(source)
    ids = [b["job_id"] for b in bodies]
    for body in bodies:
        run.client.submit(body)
    jobs, logs = run.settle(ids)
    letters = {d.job_id: d for d in run.client.iter_dead_letters() if d.job_id in jobs}

    def named(kind: Callable[[dict[str, Any]], bool]) -> list[str]:
        return [i for i in ids if kind(jobs[i])]

    flaky = named(lambda j: "fail_times" in j["payload"])[0]
    slow = named(lambda j: j["timeout_seconds"] < j["payload"].get("duration_seconds", 0))[0]
    permanent = named(lambda j: "error" in j["payload"] or j["type"] == "invalid_operation")[0]
    dependent = named(lambda j: bool(j["depends_on"]))[0]

    fail_times = jobs[flaky]["payload"]["fail_times"]
    flaky_ends = attempt_ends(logs[flaky])
    flaky_path = [flaky_ends[n]["data"]["status"] for n in sorted(flaky_ends)]
    flaky_backoff, flaky_backoff_ok = _backoff_evidence(jobs[flaky], logs[flaky])

    limit = float(jobs[slow]["timeout_seconds"])
    slow_starts, slow_ends = attempt_starts(logs[slow]), attempt_ends(logs[slow])
    ran = {n: seconds_between(slow_starts[n], slow_ends[n]["at"]) for n in slow_ends}
    stopped = all(
        slow_ends[n]["data"].get("result") == "timeout"
        and limit <= ran[n] <= limit + max(LATENCY_MARGIN, limit * 0.05)
        for n in slow_ends
    )
    slow_backoff, slow_backoff_ok = _backoff_evidence(jobs[slow], logs[slow])
    max_attempts = jobs[slow]["retry_config"]["max_attempts"]

    perm = jobs[permanent]
    perm_letter = letters.get(permanent)
    slow_letter = letters.get(slow)
    dep = jobs[dependent]
    dep_path = transitions(logs[dependent])
    return [
        Check(
            "fails then succeeds",
            f"{_short(flaky)}: attempts ended {flaky_path}; {flaky_backoff}",
            jobs[flaky]["status"] == "completed"
            and jobs[flaky]["attempts"] == fail_times + 1
            and flaky_path == ["retrying"] * fail_times + ["completed"]
            and flaky_backoff_ok,
        ),
        Check(
            "timeout retries with backoff",
            f"{_short(slow)} (limit {limit:g}s"
            + (", shrunk from the scenario's 60s by --quick" if run.quick else "")
            + f"): attempts stopped after {', '.join(f'{ran[n]:.2f}s' for n in sorted(ran))}; "
            f"{slow_backoff}; {jobs[slow]['status']} after {jobs[slow]['attempts']} attempts",
            stopped
            and slow_backoff_ok
            and jobs[slow]["status"] == "failed"
            and jobs[slow]["attempts"] == max_attempts == len(ran),
        ),
        Check(
            "permanent failure",
            f"{_short(permanent)}: {perm['status']} after {perm['attempts']} attempt(s) "
            f"({perm['last_error']}); dead letters: "
            + ", ".join(f"{_short(i)} {d.reason} after {d.attempts}" for i, d in letters.items()),
            perm["status"] == "failed"
            and perm["attempts"] == 1
            and perm_letter is not None
            and perm_letter.reason == "non_retryable_error"
            and slow_letter is not None
            and slow_letter.attempts == max_attempts,
        ),
        Check(
            "dependent handles parent failures",
            f"{_short(dependent)} waited through {fail_times} failed attempts of "
            f"{_short(flaky)}, went {' -> '.join(s for _, s in dep_path)}, started "
            f"{seconds_between(jobs[flaky]['finished_at'], dep['started_at']):.3f}s after it "
            "completed"
            if dep["started_at"] and jobs[flaky]["finished_at"]
            else f"{_short(dependent)} is {dep['status']} ({dep['cancel_reason']})",
            dep["status"] == "completed"
            and dep["attempts"] == 1
            and dep_path[:2] == [(None, "blocked"), ("blocked", "pending")]
            and as_datetime(dep["started_at"]) >= as_datetime(jobs[flaky]["finished_at"]),
        ),
    ]


# --- bonus -------------------------------------------------------------------------------


def circular(run: Run, scenario: Mapping[str, Any]) -> list[Check]:
    bodies = run.tagged(scenario["jobs"])
    depends_on = {b["job_id"]: b["depends_on"] for b in bodies}
    try:
        run.client.submit_batch(bodies)
        rejected: Invalid | None = None
    except Invalid as error:
        rejected = error
    cycle = rejected.details.get("cycle", []) if rejected and rejected.details else []
    real_cycle = (
        len(cycle) == len(bodies) + 1
        and cycle[0] == cycle[-1]
        and sorted(cycle[:-1]) == sorted(depends_on)
        and all(b in depends_on.get(a, []) for a, b in itertools.pairwise(cycle))
    )
    stored = []
    for job_id in depends_on:
        try:
            run.client.get_job(job_id)
            stored.append(job_id)
        except NotFound:
            pass
    return [
        Check(
            "cycle rejected",
            f"{rejected.status_code} {rejected.code}: {rejected.message}"
            if rejected
            else "accepted",
            rejected is not None
            and rejected.status_code == 422
            and rejected.code == "dependency_cycle"
            and real_cycle
            and " -> ".join(cycle) in rejected.message,
        ),
        Check(
            "nothing stored",
            f"GET /jobs/{{id}} for {', '.join(_short(i) for i in depends_on)}: "
            + (f"found {stored}" if stored else "404 for each"),
            not stored,
        ),
    ]


# --- the runner --------------------------------------------------------------------------

Procedure = Callable[[Run, Mapping[str, Any]], list[Check]]
PROCEDURES: dict[str, Procedure] = {
    "1_basic_job_flow": basic_flow,
    "2_simple_dependencies": dependencies,
    "3_complex_dag": dag,
    "4_resource_contention": resources,
    "5_failure_and_recovery": failures,
    "bonus_circular_dependencies": circular,
}


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    description: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


def run_scenario(
    client: TaskQueueClient, path: Path, *, quick: bool = False, timeout: float = 300.0
) -> ScenarioResult:
    """Run one scenario file; one check per entry of its `expected` list, in that order."""
    scenario = json.loads(path.read_text())
    name = path.stem
    expected = list(scenario.get("expected", []))
    run = Run(client, f"{name.split('_')[0]}-{secrets.token_hex(3)}", quick, timeout)
    try:
        checks = PROCEDURES[name](run, scenario)
    except (TaskQueueError, KeyError, ValueError, TypeError, IndexError) as error:
        checks = [Check(e, f"the run failed: {error!r}", False) for e in expected]
    # The procedures label checks briefly; the table shows the scenario's own words.
    labelled = [
        Check(expected[n] if n < len(expected) else c.expectation, c.evidence, c.passed)
        for n, c in enumerate(checks)
    ]
    labelled += [Check(e, "no check for this expectation", False) for e in expected[len(checks) :]]
    return ScenarioResult(name, str(scenario.get("description", "")), labelled)


def scenario_files(directory: Path) -> list[Path]:
    """The scenario files this runner knows, in their order."""
    paths = [directory / f"{name}.json" for name in PROCEDURES]
    return [path for path in paths if path.exists()]
