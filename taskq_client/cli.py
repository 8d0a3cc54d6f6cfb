"""`taskq`: the command line of the Smart Task Queue.

taskq submit tests/scenarios/3_complex_dag.json && taskq watch
taskq job fetch_prices
taskq scenarios run --write evaluation_results.md
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.live import Live

from taskq_client import render
from taskq_client.client import DEFAULT_URL, TaskQueueClient
from taskq_client.config import PACKAGE_CHECKOUT, resolve_key
from taskq_client.errors import ApiError, TaskQueueError
from taskq_client.files import JobFileError, parse_job_text
from taskq_client.models import TERMINAL_STATUSES, Job, JobAccepted
from taskq_client.results_file import write_section
from taskq_client.scenario_runs import run_scenario, scenario_files

app = typer.Typer(help="Submit, watch and operate Smart Task Queue jobs.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: jobs that failed for good.", no_args_is_help=True)
scenarios_app = typer.Typer(help="The case study's scenarios.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")
app.add_typer(scenarios_app, name="scenarios")

console = Console()
errors = Console(stderr=True)
LAST_SUBMITTED = Path(".taskq") / "last-submitted.json"
EXIT_FAILED, EXIT_TIMEOUT, EXIT_ERROR = 1, 2, 3
F = TypeVar("F", bound=Callable[..., Any])


def reported(command: F) -> F:
    """Turn the client's errors into a message and exit code 3 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as error:
            errors.print(f"[red]error {error.status_code} {error.code}[/]: {error.message}")
            if error.details:
                errors.print(json.dumps(error.details, indent=2, default=str))
            raise typer.Exit(EXIT_ERROR) from None
        except TaskQueueError as error:
            errors.print(f"[red]error[/]: {error}")
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="TASKQ_URL", help="API base URL")] = DEFAULT_URL,
    key: Annotated[
        Optional[str],  # noqa: UP045 (typer reads the annotation at run time)
        typer.Option(envvar="TASKQ_API_KEY", help="API key; default: .taskq/api-key"),
    ] = None,
) -> None:
    ctx.obj = TaskQueueClient(url, resolve_key(key, Path.cwd()))
    ctx.call_on_close(ctx.obj.close)


def client_of(ctx: typer.Context) -> TaskQueueClient:
    client: TaskQueueClient = ctx.find_root().obj
    return client


# --- submitting and watching ------------------------------------------------------------


@app.command()
@reported
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help='JSON: a job, a list, {"jobs": [...]}; - = stdin')],
    batch: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option("--batch/--one-by-one", help="default: a batch when a job has depends_on"),
    ] = None,
) -> None:
    """Submit the jobs of FILE (a case-study scenario file works as it is)."""
    text = sys.stdin.read() if str(file) == "-" else file.read_text()
    try:
        parsed = parse_job_text(text)
    except JobFileError as error:
        errors.print(f"[red]{file}[/]: {error}")
        raise typer.Exit(EXIT_ERROR) from None
    client = client_of(ctx)
    as_batch = parsed.has_dependencies if batch is None else batch
    accepted: list[JobAccepted] = (
        client.submit_batch(parsed.jobs) if as_batch else [client.submit(j) for j in parsed.jobs]
    )
    console.print(render.accepted_table(accepted))
    LAST_SUBMITTED.parent.mkdir(exist_ok=True)
    LAST_SUBMITTED.write_text(json.dumps([a.job_id for a in accepted]))
    console.print(f"{len(accepted)} job(s) submitted; follow them with [bold]taskq watch[/]")


@app.command()
@reported
def watch(
    ctx: typer.Context,
    job_ids: Annotated[Optional[list[str]], typer.Argument(help="default: last submitted")] = None,  # noqa: UP045
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 600.0,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
    allow_failures: Annotated[
        bool, typer.Option(help="exit 0 even when jobs failed or were cancelled")
    ] = False,
) -> None:
    """Follow jobs until they end. Exit 0 if all completed, 1 if any failed or was
    cancelled, 2 on timeout."""
    ids = job_ids or _last_submitted()
    client = client_of(ctx)
    progress = render.new_progress()
    task = progress.add_task("finished", total=len(ids))
    deadline = time.monotonic() + timeout
    jobs: dict[str, Job] = {}
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            for job_id in ids:
                if job_id not in jobs or jobs[job_id].status not in TERMINAL_STATUSES:
                    jobs[job_id] = client.get_job(job_id)
            done = sum(job.status in TERMINAL_STATUSES for job in jobs.values())
            progress.update(task, completed=done)
            live.update(render.watch_view([jobs[i] for i in ids], progress))
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(interval)
    bad = [j for j in jobs.values() if j.status in ("failed", "cancelled")]
    if done < len(ids):
        errors.print(f"[red]timed out[/] after {timeout:g} s: {len(ids) - done} job(s) not done")
        raise typer.Exit(EXIT_TIMEOUT)
    if bad and not allow_failures:
        errors.print(f"[red]{len(bad)} job(s) did not complete[/]: "
                     + ", ".join(f"{j.job_id} {j.status}" for j in bad))  # fmt: skip
        raise typer.Exit(EXIT_FAILED)
    console.print(f"all {len(ids)} job(s) finished")


def _last_submitted() -> list[str]:
    try:
        ids = json.loads(LAST_SUBMITTED.read_text())
    except (OSError, ValueError):
        errors.print("no job ids given and no earlier `taskq submit` in this directory")
        raise typer.Exit(EXIT_ERROR) from None
    return [str(i) for i in ids]


# --- reading ----------------------------------------------------------------------------


@app.command("job")
@reported
def show_job(
    ctx: typer.Context,
    job_id: str,
    logs: Annotated[bool, typer.Option("--logs/--no-logs")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON")] = False,
) -> None:
    """One job: status, waiting reason, progress, result and logs."""
    client = client_of(ctx)
    job = client.get_job(job_id)
    entries = client.logs(job_id) if logs else []
    if as_json:
        out = job.model_dump(mode="json")
        if logs:
            out["logs"] = [e.model_dump(mode="json") for e in entries]
        console.print_json(json.dumps(out))
        return
    console.print(render.job_detail(job))
    if logs:
        console.print(render.logs_table(entries))


@app.command("jobs")
@reported
def list_jobs(
    ctx: typer.Context,
    status: Annotated[Optional[str], typer.Option(help="e.g. running, failed")] = None,  # noqa: UP045
    type: Annotated[Optional[str], typer.Option(help="job type")] = None,  # noqa: UP045
    priority: Annotated[Optional[str], typer.Option()] = None,  # noqa: UP045
    created_after: Annotated[Optional[datetime], typer.Option()] = None,  # noqa: UP045
    created_before: Annotated[Optional[datetime], typer.Option()] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
) -> None:
    """Jobs, newest first, filtered."""
    filters = {
        "status": status,
        "type": type,
        "priority": priority,
        "created_after": _utc(created_after),
        "created_before": _utc(created_before),
    }
    items = []
    for job in client_of(ctx).iter_jobs(page_size=min(limit, 500), **filters):
        items.append(job)
        if len(items) >= limit:
            break
    console.print(render.jobs_table(items, title=f"{len(items)} job(s)"))


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@app.command()
@reported
def stats(ctx: typer.Context) -> None:
    """Counts by status, queue depth, tokens, throughput, timings."""
    console.print_json(json.dumps(client_of(ctx).stats()))


@app.command()
@reported
def pause(ctx: typer.Context) -> None:
    """Stop starting new jobs (running ones go on)."""
    console.print(f"paused: {client_of(ctx).pause().paused}")


@app.command()
@reported
def resume(ctx: typer.Context) -> None:
    """Start jobs again."""
    console.print(f"paused: {client_of(ctx).resume().paused}")


@app.command()
@reported
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job (a running one is stopped first)."""
    job = client_of(ctx).cancel(job_id)
    console.print(f"{job.job_id}: {job.status}")


# --- dead letters -----------------------------------------------------------------------


@dlq_app.command("list")
@reported
def dlq_list(
    ctx: typer.Context,
    open_only: Annotated[bool, typer.Option("--open", help="only unresolved ones")] = False,
) -> None:
    """Dead letters, newest first."""
    items = [d for d in client_of(ctx).iter_dead_letters() if not open_only or not d.resolution]
    console.print(render.dead_letters_table(items))


@dlq_app.command("show")
@reported
def dlq_show(ctx: typer.Context, dead_letter_id: int) -> None:
    """One dead letter with its original message."""
    console.print_json(client_of(ctx).dead_letter(dead_letter_id).model_dump_json())


@dlq_app.command("replay")
@reported
def dlq_replay(ctx: typer.Context, dead_letter_id: int) -> None:
    """Run the job again with a fresh attempt budget."""
    letter = client_of(ctx).replay(dead_letter_id)
    console.print(f"dead letter {letter.id}: job {letter.job_id} replayed")


@dlq_app.command("discard")
@reported
def dlq_discard(ctx: typer.Context, dead_letter_id: int) -> None:
    """Discard a dead letter."""
    client_of(ctx).discard(dead_letter_id)
    console.print(f"dead letter {dead_letter_id} discarded")


# --- scenarios --------------------------------------------------------------------------


@scenarios_app.command("run")
@reported
def scenarios_run(
    ctx: typer.Context,
    names: Annotated[Optional[list[str]], typer.Argument(help="default: all six")] = None,  # noqa: UP045
    directory: Annotated[
        Path, typer.Option("--dir", help="where the scenario files are")
    ] = PACKAGE_CHECKOUT / "tests" / "scenarios",
    quick: Annotated[
        bool,
        typer.Option(help="scenario 5's 60 s time limit as 0.5 s (seconds instead of minutes)"),
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for a scenario's jobs")] = 300.0,
    write: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="write the table into this file's scenarios section"),
    ] = None,
) -> None:
    """Run the five scenarios and the circular-dependency bonus against the running
    system and check every expected behaviour. Pauses the scheduler briefly in 1, 2, 4.
    Exit 0 if every expectation holds, else 1."""
    client = client_of(ctx)
    paths = [p for p in scenario_files(directory) if not names or any(n in p.stem for n in names)]
    if not paths:
        errors.print(f"no scenario files in {directory}")
        raise typer.Exit(EXIT_ERROR)
    results = []
    for path in paths:
        with console.status(f"running {path.stem}"):
            result = run_scenario(client, path, quick=quick, timeout=timeout)
        mark = "[green]pass[/]" if result.passed else "[bold red]FAIL[/]"
        console.print(f"{path.stem}: {mark}")
        results.append(result)
    console.print(render.scenarios_table(results))
    if write is not None:
        note = "with --quick" if quick else "scenarios verbatim"
        write_section(
            write,
            render.SCENARIOS_HEADING,
            render.scenarios_markdown(results, client.base_url, note),
        )
        console.print(f"written to {write}")
    if not all(r.passed for r in results):
        raise typer.Exit(EXIT_FAILED)
