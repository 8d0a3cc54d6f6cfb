"""Resource tokens and admission (issue 4): the time to choose the next jobs as the jobs
table grows from 10 thousand to 10 million rows.

One database per size (`taskq_admbench_<size>`, dropped and recreated, migrated with
alembic), filled with psycopg COPY: `--pending` ready jobs (mixed priorities and sizes) and
the rest finished history, as a long-lived queue looks. Then, round-robin over the sizes
so that load from other processes hits them alike, `--runs` times each:

- admission step: `scheduling.admit_ready_jobs` (lock the pool row, read the best-ranked
  candidates through ix_jobs_admission, `decide_admission`, insert leases, mark queued,
  take tokens, write events) in a transaction that is rolled back;
- choice only: `jobs.ready_candidates` + `admission.decide_admission`, rolled back.

Reports medians (and p90), the ratio of the largest size to the smallest (target at most
1.5: the cost must not grow with the table), and the EXPLAIN (ANALYZE, BUFFERS) plan of the
candidate query captured from the repository, saved to bench/results/.

    .venv/bin/python bench/admission.py --results-file evaluation_results.md

All traffic goes to 127.0.0.1; the databases are dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bulk_load import drop_jobs_indexes  # noqa: E402
from bench.results_file import report  # noqa: E402
from queue_service.admission import AdmissionPolicy, decide_admission  # noqa: E402
from queue_service.model import Priority  # noqa: E402
from queue_service.repository import jobs as jobs_repo  # noqa: E402
from queue_service.repository import pool as pool_repo  # noqa: E402
from queue_service.scheduling import admit_ready_jobs  # noqa: E402
from queue_service.settings import Settings  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
PREFIX = "taskq_admbench"
SECTION = "## Resource tokens and admission (issue 4)"
COMMAND = ".venv/bin/python bench/admission.py --results-file evaluation_results.md"
RESULTS_DIR = ROOT / "bench" / "results"
COLUMN_TYPES = [
    "text", "text", "text", "jsonb", "int4", "int4", "int4", "float8", "float8", "float8",
    "float8", "text", "text", "int4", "timestamptz", "timestamptz",
]  # fmt: skip

COMPLETED_COLUMNS = (
    "id, type, priority, payload, cpu_units, memory_mb, max_attempts, backoff_multiplier, "
    "initial_delay_seconds, max_delay_seconds, timeout_seconds, request_hash, status, "
    "attempts, created_at, queued_at, started_at, finished_at"
)
PENDING_COLUMNS = (
    "id, type, priority, payload, cpu_units, memory_mb, max_attempts, backoff_multiplier, "
    "initial_delay_seconds, max_delay_seconds, timeout_seconds, request_hash, status, "
    "attempts, created_at, pending_since, rank"
)
PRIORITIES = [p.value for p in Priority]
EMPTY = Jsonb({})


def database_name(size: int) -> str:
    return f"{PREFIX}_{size}"


def sa_url(size: int) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database_name(size)}"


# --- filling ----------------------------------------------------------------------------


def create_database(size: int) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database_name(size)} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {database_name(size)}")
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.attributes["database_url"] = sa_url(size)
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def drop_database(size: int) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {database_name(size)} WITH (FORCE)")


def completed_rows(count: int, start: datetime) -> Iterator[tuple[Any, ...]]:
    """Finished jobs, one millisecond apart, oldest first."""
    step = timedelta(milliseconds=1)
    at = start
    for n in range(count):
        at += step
        yield (
            f"done_{n:09d}", "noop", PRIORITIES[n & 3], EMPTY, 1, 128, 3, 2.0, 1.0, 300.0,
            300.0, "x", "completed", 1, at, at, at, at,
        )  # fmt: skip


def pending_rows(count: int, start: datetime, aging: float) -> Iterator[tuple[Any, ...]]:
    """Ready jobs of every priority and size, as submission stores them."""
    rng = random.Random(4)
    for n in range(count):
        priority = Priority(PRIORITIES[rng.randrange(4)])
        since = start + timedelta(milliseconds=n)
        yield (
            f"wait_{n:06d}",
            "noop",
            priority.value,
            EMPTY,
            rng.choice((1, 1, 2, 4)),
            rng.choice((128, 256, 512)),
            3,
            2.0,
            1.0,
            300.0,
            300.0,
            "x",
            "pending",
            0,
            since,
            since,
            since.timestamp() - priority.level * aging,
        )


def fill(size: int, pending: int, aging: float) -> dict[str, float]:
    """COPY `size - pending` finished jobs (older) then `pending` ready ones (newest)."""
    now = datetime.now(UTC)
    history = size - pending
    clock = [time.perf_counter()]
    with psycopg.connect(f"{PG}/{database_name(size)}") as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        # Secondary indexes are built once after the load, much faster than row by row;
        # they are recreated from their own definitions, so the schema stays the migrated one.
        definitions = drop_jobs_indexes(conn)
        with conn.cursor() as cur:
            # Binary COPY: half the server-side parsing of the text format.
            with cur.copy(f"COPY jobs ({COMPLETED_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([*COLUMN_TYPES, "timestamptz", "timestamptz"])
                for row in completed_rows(history, now - timedelta(milliseconds=history + 1)):
                    copy.write_row(row)
            with cur.copy(f"COPY jobs ({PENDING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([*COLUMN_TYPES, "float8"])
                for row in pending_rows(pending, now, aging):
                    copy.write_row(row)
        clock.append(time.perf_counter())
        for definition in definitions:
            conn.execute(definition)
        conn.commit()
    clock.append(time.perf_counter())
    with psycopg.connect(f"{PG}/{database_name(size)}", autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) jobs")
    clock.append(time.perf_counter())
    copy_s, index_s, vacuum_s = (round(b - a, 1) for a, b in pairwise(clock))
    return {"copy_seconds": copy_s, "index_seconds": index_s, "vacuum_seconds": vacuum_s}


def table_facts(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM jobs) AS rows, "
                "(SELECT count(*) FROM jobs WHERE status = 'pending') AS pending, "
                "pg_size_pretty(pg_total_relation_size('jobs')) AS total_size, "
                "pg_size_pretty(pg_relation_size('ix_jobs_admission')) AS admission_index"
            )
        ).one()
    return dict(row._mapping)


# --- measuring --------------------------------------------------------------------------


def rolled_back(engine: sa.Engine, work: Callable[[sa.Connection], Any]) -> tuple[float, Any]:
    """Seconds `work` took inside a transaction that is then rolled back."""
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            started = time.perf_counter()
            value = work(conn)
            return time.perf_counter() - started, value
        finally:
            transaction.rollback()


def admission_step(settings: Settings) -> Callable[[sa.Connection], int]:
    def work(conn: sa.Connection) -> int:
        return len(admit_ready_jobs(conn, settings, datetime.now(UTC)))

    return work


def choice_only(settings: Settings) -> Callable[[sa.Connection], int]:
    policy = AdmissionPolicy.from_settings(settings)

    def work(conn: sa.Connection) -> int:
        pool = pool_repo.lock_pool(conn)
        assert pool is not None
        locked = jobs_repo.ready_candidates(conn, settings.admission_window)
        decision = decide_admission([c for c, _ in locked], pool, datetime.now(UTC), policy)
        return len(decision.started)

    return work


def candidate_query(engine: sa.Engine, window: int) -> tuple[str, Any]:
    """The SQL `ready_candidates` sends, captured as it runs."""
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    with engine.connect() as conn:
        sa.event.listen(conn, "before_cursor_execute", capture)
        jobs_repo.ready_candidates(conn, window)
        conn.rollback()
    return sent[0]


def query_only(statement: str, parameters: Any) -> Callable[[sa.Connection], float]:
    """The server's execution time of the candidate query (EXPLAIN ANALYZE), in seconds."""

    def work(conn: sa.Connection) -> float:
        plan = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
        ).scalar_one()
        return float(plan[0]["Execution Time"]) / 1000

    return work


def explain_analyze(engine: sa.Engine, window: int) -> str:
    statement, parameters = candidate_query(engine, window)
    with engine.connect() as conn:
        lines = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters
        ).scalars()
        plan = "\n".join(lines)
        conn.rollback()
    query = statement.replace("%(limit)s", str(window))
    return f"{query}\n\n{plan}\n"


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 3),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
        "min_ms": round(ordered[0] * 1000, 3),
    }


def run_benchmark(sizes: list[int], pending: int, runs: int, keep: bool) -> dict[str, Any]:
    settings = {size: Settings(database_url=sa_url(size)) for size in sizes}
    aging = settings[sizes[0]].aging_seconds_per_level
    engines: dict[int, sa.Engine] = {}
    results: dict[str, Any] = {"pending": pending, "runs": runs, "sizes": {}}
    try:
        for size in sizes:
            print(f"filling {size:,} rows ...", file=sys.stderr, flush=True)
            create_database(size)
            timings = fill(size, pending, aging)
            engines[size] = sa.create_engine(sa_url(size), pool_size=2)
            results["sizes"][size] = {**table_facts(engines[size]), **timings}
            print(f"  {results['sizes'][size]}", file=sys.stderr, flush=True)

        queries = {
            size: candidate_query(engines[size], settings[size].admission_window) for size in sizes
        }
        steps: dict[int, list[float]] = {size: [] for size in sizes}
        choices: dict[int, list[float]] = {size: [] for size in sizes}
        executions: dict[int, list[float]] = {size: [] for size in sizes}
        admitted: dict[int, set[int]] = {size: set() for size in sizes}
        rng = random.Random(7)
        for round_ in range(runs + 3):  # three warm-up rounds are not counted
            order = list(sizes)
            rng.shuffle(order)
            for size in order:
                step_seconds, started = rolled_back(engines[size], admission_step(settings[size]))
                choice_seconds, _ = rolled_back(engines[size], choice_only(settings[size]))
                _, execution = rolled_back(engines[size], query_only(*queries[size]))
                if round_ >= 3:
                    steps[size].append(step_seconds)
                    choices[size].append(choice_seconds)
                    executions[size].append(execution)
                    admitted[size].add(started)

        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            plan = explain_analyze(engines[size], settings[size].admission_window)
            (RESULTS_DIR / f"admission_explain_{size}.txt").write_text(plan)
            results["sizes"][size].update(
                admission_step=summary(steps[size]),
                choice_only=summary(choices[size]),
                query_only=summary(executions[size]),
                jobs_started_per_step=sorted(admitted[size]),
                explain=plan,
            )
        smallest, largest = results["sizes"][min(sizes)], results["sizes"][max(sizes)]
        results["ratio_largest_to_smallest"] = {
            kind: round(largest[kind]["median_ms"] / smallest[kind]["median_ms"], 2)
            for kind in ("admission_step", "choice_only", "query_only")
        }
    finally:
        for engine in engines.values():
            engine.dispose()
        if not keep:
            for size in sizes:
                drop_database(size)
    return results


# --- reporting --------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    sizes = sorted(results["sizes"])
    smallest, largest = min(sizes), max(sizes)
    ratio = results["ratio_largest_to_smallest"]
    lines = [
        SECTION,
        "",
        f"Command: `{COMMAND}` (one database per size, filled with psycopg COPY: "
        f"{results['pending']:,} ready jobs of mixed priorities and sizes, the rest finished "
        f"history; {results['runs']} measured runs per size, round-robin over the sizes, "
        "medians; each run in a transaction that is rolled back). Measured "
        f"{results['measured_at']} on the shared 2-core development VM, PostgreSQL 15, "
        "while other test suites ran beside it.",
        "",
        "| rows in jobs | table + indexes | ix_jobs_admission | admission step, median (p90) "
        "| choice only, median (p90) | candidate query in the server, median (p90) "
        "| COPY + indexes + VACUUM |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        r = results["sizes"][size]
        lines.append(
            f"| {r['rows']:,} | {r['total_size']} | {r['admission_index']} "
            f"| {r['admission_step']['median_ms']:.2f} ms ({r['admission_step']['p90_ms']:.2f}) "
            f"| {r['choice_only']['median_ms']:.2f} ms ({r['choice_only']['p90_ms']:.2f}) "
            f"| {r['query_only']['median_ms']:.3f} ms ({r['query_only']['p90_ms']:.3f}) "
            f"| {r['copy_seconds']:.0f} s + {r['index_seconds']:.0f} s "
            f"+ {r['vacuum_seconds']:.0f} s |"
        )
    lines += [
        "",
        f"Ratio {largest:,} rows / {smallest:,} rows (target at most 1.5): admission step "
        f"**{ratio['admission_step']}**, choice only **{ratio['choice_only']}**, candidate "
        f"query in the server **{ratio['query_only']}**.",
        "",
        "- *admission step* = `scheduling.admit_ready_jobs`: lock the pool row, read the "
        "best-ranked ready jobs (4 x the free CPU units: 32), `decide_admission`, insert the "
        f"leases, mark them queued, take the tokens, write the events "
        f"({'/'.join(str(n) for n in results['sizes'][largest]['jobs_started_per_step'])} "
        "jobs started per step with the default 8 CPU units / 4096 MB).",
        "- *choice only* = lock the pool row + `jobs.ready_candidates` over the whole "
        "window (200) + `admission.decide_admission`; *candidate query in the server* = "
        "the `Execution Time` EXPLAIN ANALYZE reports for the query of `ready_candidates` "
        "(no client round trip).",
        "- The candidate query reads only the partial index ix_jobs_admission (ready jobs "
        "without a lease, ordered by (rank, seq)): its size follows the number of waiting "
        "jobs, not the history, and the LIMIT stops the scan after the window. Aging needs "
        "no rewrite because rank is fixed when the job becomes ready.",
        "",
        f"EXPLAIN (ANALYZE, BUFFERS) of the candidate query at {largest:,} rows "
        f"(also in bench/results/admission_explain_{largest}.txt; the other sizes beside it):",
        "",
        "```",
        results["sizes"][largest]["explain"].rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000,10000000", help="rows per database")
    parser.add_argument("--pending", type=int, default=5000, help="ready jobs in each")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = run_benchmark(sizes, args.pending, args.runs, args.keep)
    results["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (RESULTS_DIR / "admission.json").write_text(json.dumps(results, indent=2, default=str))
    report(results, SECTION, markdown(results), args.results_file)


if __name__ == "__main__":
    main()
