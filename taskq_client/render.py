"""Rich renderings for the command line, and the markdown of a scenarios run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from taskq_client.models import DeadLetter, Job, JobAccepted, JobSummary, LogEntry
from taskq_client.scenario_runs import ScenarioResult

STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "running": "cyan",
    "retrying": "magenta",
    "blocked": "dim",
    "scheduled": "blue",
    "pending": "white",
}


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(value: datetime | None) -> str:
    return value.strftime("%H:%M:%S.%f")[:-3] if value else ""


def progress_text(value: Any) -> str:
    if isinstance(value, dict):
        fraction = value.get("fraction")
        message = value.get("message") or ""
        return f"{fraction:.0%} {message}".strip() if isinstance(fraction, int | float) else ""
    return "" if value is None else str(value)


def accepted_table(items: Sequence[JobAccepted]) -> Table:
    table = Table("job_id", "status", "priority", "position", "new", title="Submitted")
    for a in items:
        pos = "" if a.position_in_queue is None else str(a.position_in_queue)
        table.add_row(a.job_id, status(a.status), a.priority, pos, "yes" if a.created else "no")
    return table


def jobs_table(jobs: Iterable[Job | JobSummary], title: str | None = None) -> Table:
    table = Table(
        "job_id", "type", "priority", "status", "attempts", "waiting / progress",
        "started", "finished", title=title,
    )  # fmt: skip
    for job in jobs:
        detail = ""
        if isinstance(job, Job):
            detail = job.waiting_reason or progress_text(job.progress)
        if job.cancel_reason:
            detail = job.cancel_reason
        table.add_row(
            job.job_id, job.type, job.priority, status(job.status), str(job.attempts), detail,
            when(job.started_at), when(job.finished_at),
        )  # fmt: skip
    return table


def watch_view(jobs: Sequence[Job], progress: Progress) -> Group:
    return Group(progress, jobs_table(jobs))


def new_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )


def job_detail(job: Job) -> Table:
    table = Table(show_header=False, title=job.job_id)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("status", status(job.status)),
        ("type / priority", f"{job.type} / {job.priority}"),
        ("waiting_reason", job.waiting_reason or ""),
        ("progress", progress_text(job.progress)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("resources", f"{job.resource_requirements.cpu_units} CPU, "
                      f"{job.resource_requirements.memory_mb} MB"),
        ("depends_on", ", ".join(job.depends_on)),
        ("blocked_by", ", ".join(job.blocked_by)),
        ("dependents", ", ".join(job.dependents)),
        ("created / started", f"{when(job.created_at)} / {when(job.started_at)}"),
        ("finished", when(job.finished_at)),
        ("next_attempt_at", when(job.next_attempt_at)),
        ("cancel_reason", job.cancel_reason or ""),
        ("last_error", job.last_error or ""),
        ("result", "" if job.result is None else str(job.result)),
    ]  # fmt: skip
    for name, value in rows:
        if value:
            table.add_row(name, value)
    return table


def logs_table(entries: Sequence[LogEntry]) -> Table:
    table = Table("at", "attempt", "level", "event", "message", title="Logs")
    for e in entries:
        style = "red" if e.level in ("error", "warning") else ""
        table.add_row(when(e.at), str(e.attempt), e.level, e.event, Text(e.message, style=style))
    return table


def dead_letters_table(items: Sequence[DeadLetter]) -> Table:
    table = Table(
        "id", "job_id", "type", "reason", "attempts", "died_at", "resolution", "last_error"
    )
    for d in items:
        table.add_row(
            str(d.id), d.job_id, d.type, d.reason, str(d.attempts), when(d.died_at),
            d.resolution or "", (d.last_error or "")[:80],
        )  # fmt: skip
    return table


def scenarios_table(results: Sequence[ScenarioResult]) -> Table:
    table = Table("scenario", "expectation", "evidence", "result", show_lines=True)
    for result in results:
        for check in result.checks:
            verdict = (
                Text("pass", style="green") if check.passed else Text("FAIL", style="bold red")
            )
            table.add_row(result.name, check.expectation, check.evidence, verdict)
    return table


SCENARIOS_HEADING = "## How the system handles the test scenarios"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def scenarios_markdown(results: Sequence[ScenarioResult], base_url: str, note: str) -> str:
    checks = [c for r in results for c in r.checks]
    passed = sum(c.passed for c in checks)
    lines = [
        SCENARIOS_HEADING,
        "",
        f"Written by `taskq scenarios run` ({note}) against {base_url}: "
        f"{passed} of {len(checks)} expectations hold. Every expectation is checked from the "
        "jobs' recorded timestamps and logs (`GET /jobs/{id}`, `GET /jobs/{id}/logs`), "
        "the dead letters and `/stats`.",
        "",
    ]
    for result in results:
        lines += [
            f"### {result.name}: {result.description}",
            "",
            "| expectation | evidence | result |",
            "|---|---|---|",
        ]
        lines += [
            f"| {_cell(c.expectation)} | {_cell(c.evidence)} | {'pass' if c.passed else 'FAIL'} |"
            for c in result.checks
        ]
        lines.append("")
    return "\n".join(lines)
