"""Scale (issue 8): GET /jobs/{id} and filtered GET /jobs pages over HTTP with 10 million
rows in `jobs`.

A database of its own (`taskq_scale_large`, dropped and recreated, migrated with alembic)
is filled in the server (one INSERT ... SELECT over generate_series, faster than a COPY
fed by Python on this machine): `--rows` jobs created over `--days` days, oldest first,
with a spread of types (15 registered types, skewed), priorities (normal 60 %, high 20 %,
low 15 %, critical 5 %) and statuses (history completed 94 % / failed 3 % / cancelled 3 %,
but invalid_operation never completes and noop never fails; the newest `--active` jobs
pending, blocked, scheduled, retrying or running), dependency edges (5 % of finished jobs
depend on the job before; every blocked job on a pending one), and `job_events` rows
for the newest `--events-jobs` jobs (the history GET /jobs/{id} reads its progress from).
Secondary indexes are built after the load (as bench/admission.py's loader does), then
VACUUM ANALYZE.

Then the api runs as scripts/run.sh starts it (uvicorn, an API key in TASKQ_API_KEYS) and
one client at concurrency 1 measures, after a warm-up (bench/http_load.Connection: raw
HTTP/1.1 on one keep-alive connection, tens of microseconds of client CPU a request where
httpx spent milliseconds, which the /healthz floor row showed):
- GET /jobs/{id} of random ids (a random sample of the table), and of random pending ids;
- GET /jobs with each filter combination of FILTERS: the first page, and a cursor page
  (a keyset at a random row of the table, as a client paging deep gets).
Each list query is also run under EXPLAIN (ANALYZE, BUFFERS) straight from the
repository function (bench/results/large_table_explain.txt).

    .venv/bin/python bench/large_table.py --results-file evaluation_results.md

Targets: GET /jobs/{id} p99 <= 5 ms, list page p99 <= 20 ms. `--keep` keeps the database
(and `--reuse` measures a kept one without filling again).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bulk_load import drop_jobs_indexes  # noqa: E402
from bench.http_load import Connection  # noqa: E402
from bench.results_file import write_section  # noqa: E402
from bench.scale_support import (  # noqa: E402
    PG,
    command_line,
    drop_services,
    fresh_services,
    latency_ms,
    product_env,
)
from queue_service.repository import jobs as jobs_repo  # noqa: E402
from tests.support.product import Product, bearer  # noqa: E402

NAME = "taskq_scale_large"
SECTION = "## Scale: 10 million jobs, GET /jobs/{id} and list pages over HTTP (issue 8)"
RESULTS_DIR = ROOT / "bench" / "results"

TYPES = {
    "noop": 25, "send_email": 20, "notification": 12, "data_fetch": 8, "data_processing": 7,
    "external_api": 6, "quick_task": 5, "processing": 4, "report": 3, "generate_report": 3,
    "report_generation": 2, "analysis": 2, "data_export": 2, "long_running": 0.5,
    "invalid_operation": 0.5,
}  # fmt: skip
PRIORITIES = {"normal": 60, "high": 20, "low": 15, "critical": 5}
LEVEL = {"low": 0, "normal": 1, "high": 2, "critical": 3}
ACTIVE = {"pending": 40, "blocked": 15, "scheduled": 10, "retrying": 5, "completed": 30}
HISTORY = {"completed": 94, "failed": 3, "cancelled": 3}

# The filter combinations of GET /jobs measured (SPEC: status, type, priority,
# created_after/before); `window` is replaced by a one-day range in the middle.
FILTERS: list[dict[str, str]] = [
    {},
    {"status": "completed"},
    {"status": "failed"},
    {"status": "pending"},
    {"status": "running"},
    {"type": "send_email"},
    {"type": "data_export"},
    {"priority": "critical"},
    {"status": "failed", "type": "send_email"},
    {"status": "failed", "type": "data_export"},
    {"status": "cancelled", "type": "invalid_operation"},
    # Empty combinations an operator asks for: every matching row of the smaller index
    # is read to prove there is none.
    {"status": "completed", "type": "invalid_operation"},
    {"status": "failed", "type": "noop"},
    {"status": "completed", "priority": "critical"},
    {"type": "report", "priority": "low"},
    {"status": "failed", "window": "1"},
    {"window": "1"},
]

COLUMNS = (
    "id, type, priority, payload, cpu_units, memory_mb, max_attempts, backoff_multiplier, "
    "initial_delay_seconds, max_delay_seconds, timeout_seconds, run_at, request_hash, status, "
    "attempts, remaining_deps, rank, pending_since, created_at, queued_at, started_at, "
    "finished_at, next_attempt_at, last_error, cancel_reason, result"
)
EVENT_COLUMNS = "job_id, at, level, event, attempt, status, previous_status, message, data"


def weighted(weights: Mapping[str, float], draw: str) -> str:
    """SQL choosing a key of `weights` with probability by weight, from `draw` in [0, 1)."""
    total = sum(weights.values())
    bounds, running = [], 0.0
    for weight in list(weights.values())[:-1]:
        running += weight / total
        bounds.append(f"{running:.6f}")
    keys = ", ".join(f"'{k}'" for k in weights)
    return f"(ARRAY[{keys}])[width_bucket({draw}, ARRAY[0, {', '.join(bounds)}]::float8[])]"


def job_rows_sql(rows: int, active: int, days: int) -> str:
    """INSERT ... SELECT generating `rows` jobs in the server, oldest first; the newest
    `active` hold the queue's live statuses (generate_series yields in order, so seq
    follows created_at; an ORDER BY would sort the whole set on disk). Job ids are `job_`
    + 26 characters that sort by creation time, like the product's ULIDs."""
    history, live = weighted(HISTORY, "rs"), weighted(ACTIVE, "rs")
    levels = " ".join(f"WHEN '{k}' THEN {v}" for k, v in LEVEL.items())
    return f"""
    INSERT INTO jobs ({COLUMNS})
    SELECT 'job_' || upper(lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0')
                 || lpad(to_hex((rx * 72057594037927935)::bigint), 14, '0')),
           type, priority,
           jsonb_build_object('customer_id', (rx * 1e6)::int, 'template', 't' || (n % 64),
                              'items', n % 7),
           1, 128, 3, 2.0, 1.0, 300.0, 300.0,
           CASE WHEN status = 'scheduled' THEN now() + (60 + rx * 86000) * interval '1 s' END,
           'x', status,
           CASE WHEN status = 'failed' THEN 3
                WHEN status IN ('completed', 'cancelled', 'running', 'retrying') THEN 1
                ELSE 0 END,
           CASE WHEN status = 'blocked' THEN 1 ELSE 0 END,
           CASE WHEN status = 'pending'
                THEN extract(epoch FROM created) - 60.0 * CASE priority {levels} END END,
           CASE WHEN status = 'pending' THEN created END,
           created,
           CASE WHEN status IN ('completed', 'failed', 'cancelled', 'running', 'retrying')
                THEN created + interval '20 ms' END,
           CASE WHEN status IN ('completed', 'failed', 'cancelled', 'running', 'retrying')
                THEN created + interval '25 ms' END,
           CASE WHEN status IN ('completed', 'failed', 'cancelled')
                THEN created + (0.03 + rx * 5) * interval '1 s' END,
           CASE WHEN status = 'scheduled' THEN now() + (60 + rx * 86000) * interval '1 s'
                WHEN status = 'retrying' THEN now() + (1 + rx * 300) * interval '1 s' END,
           CASE WHEN status = 'failed' THEN 'RetryableJobError: upstream answered 503'
                WHEN status = 'retrying' THEN 'RetryableJobError: timeout' END,
           CASE WHEN status = 'cancelled'
                THEN CASE WHEN rx < 0.7 THEN 'requested' ELSE 'upstream_failed:job_x' END END,
           CASE WHEN status = 'completed' THEN '{{"ok": true}}'::jsonb END
    FROM (
        -- Types and outcomes correlate as in the product: invalid_operation never
        -- completes, noop never fails.
        SELECT n, created, rx, type, priority,
               CASE WHEN type = 'invalid_operation' AND drawn = 'completed' THEN 'failed'
                    WHEN type = 'noop' AND drawn = 'failed' THEN 'completed'
                    ELSE drawn END AS status
        FROM (
            SELECT n, created, rx, {weighted(TYPES, "rt")} AS type,
                   {weighted(PRIORITIES, "rp")} AS priority,
                   CASE WHEN n < {rows - active} THEN {history}
                        WHEN ru < 0.0003 THEN 'running' ELSE {live} END AS drawn
            FROM (SELECT n, now() - interval '{days} days' + n * ({days} * 86400.0 / {rows})
                         * interval '1 s' AS created,
                         random() AS rs, random() AS rt, random() AS rp, random() AS rx,
                         random() AS ru
                  FROM generate_series(0, {rows - 1}) n) draws
        ) d
    ) g
    """


def load(conn: psycopg.Connection[Any], args: argparse.Namespace) -> dict[str, float]:
    """Jobs, then edges and events from what was loaded; returns seconds per phase."""
    clock = {"start": time.perf_counter()}
    # Session-local: no triggers (the stream's NOTIFY) and no FK checks while loading;
    # the rows are consistent by construction.
    conn.execute("SET session_replication_role = replica")
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET maintenance_work_mem = '1GB'")
    definitions = drop_jobs_indexes(conn)
    conn.execute(job_rows_sql(args.rows, args.active, args.days))
    clock["jobs_insert"] = time.perf_counter()
    for definition in definitions:
        conn.execute(definition)
    clock["jobs_indexes"] = time.perf_counter()
    # Edges: 5 % of finished jobs depend on the job before them; each blocked job on a
    # pending one (seq order is creation order).
    conn.execute(
        "INSERT INTO job_dependencies (job_id, depends_on) "
        "SELECT id, prev FROM (SELECT id, status, seq, lag(id) OVER (ORDER BY seq) AS prev "
        "FROM jobs) j WHERE prev IS NOT NULL AND status IN ('completed', 'failed', 'cancelled') "
        "AND seq % 20 = 0"
    )
    conn.execute(
        "INSERT INTO job_dependencies (job_id, depends_on) "
        "SELECT b.id, p.id FROM (SELECT id, row_number() OVER (ORDER BY seq) AS n FROM jobs "
        "WHERE status = 'blocked') b JOIN (SELECT id, row_number() OVER (ORDER BY seq) AS n "
        "FROM jobs WHERE status = 'pending') p ON p.n = b.n"
    )
    # The history of the newest jobs: submitted, started, finished, and progress for 10 %.
    conn.execute(
        f"""
        WITH recent AS (SELECT * FROM jobs ORDER BY seq DESC LIMIT {int(args.events_jobs)})
        INSERT INTO job_events ({EVENT_COLUMNS})
        SELECT id, created_at, 'info', 'job_' || first_status, 0, first_status, NULL,
               'new -> ' || first_status, '{{}}'::jsonb
        FROM (SELECT id, created_at, CASE WHEN status IN ('blocked', 'scheduled') THEN status
              ELSE 'pending' END AS first_status FROM recent) r
        UNION ALL
        SELECT id, started_at, 'info', 'job_running', 1, 'running', 'pending',
               'pending -> running', '{{}}'::jsonb FROM recent WHERE started_at IS NOT NULL
        UNION ALL
        SELECT id, started_at + interval '1 ms', 'info', 'job_progress', 1, NULL, NULL,
               'halfway', '{{"fraction": 0.5, "message": "halfway"}}'::jsonb
        FROM recent WHERE started_at IS NOT NULL AND seq % 10 = 0
        UNION ALL
        SELECT id, finished_at, CASE status WHEN 'completed' THEN 'info' ELSE 'error' END,
               'job_' || status, attempts, status, 'running', 'running -> ' || status,
               '{{}}'::jsonb FROM recent WHERE finished_at IS NOT NULL
        """
    )
    conn.commit()
    clock["edges_events"] = time.perf_counter()
    conn.autocommit = True
    conn.execute("VACUUM (ANALYZE) jobs, job_dependencies, job_events")
    clock["vacuum"] = time.perf_counter()
    phases = list(clock.items())
    return {name: round(t - phases[i][1], 1) for i, (name, t) in enumerate(phases[1:])}


def table_facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM job_events), "
        "(SELECT count(*) FROM job_dependencies), "
        "pg_size_pretty(pg_total_relation_size('jobs')), "
        "pg_size_pretty(pg_total_relation_size('job_events')), "
        "pg_size_pretty(pg_database_size(current_database()))"
    ).fetchone()
    assert row is not None
    by_status = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY 1").fetchall())
    keys = ("jobs", "job_events", "job_dependencies", "jobs_size", "events_size", "db_size")
    return {**dict(zip(keys, row, strict=True)), "by_status": by_status}


# --- measuring --------------------------------------------------------------------------


def filter_params(spec: dict[str, str], middle: datetime) -> dict[str, str]:
    params = {k: v for k, v in spec.items() if k != "window"}
    if "window" in spec:
        params["created_after"] = middle.isoformat()
        params["created_before"] = (middle + timedelta(days=1)).isoformat()
    return params


def label(spec: dict[str, str]) -> str:
    parts = [f"{k}={v}" for k, v in spec.items() if k != "window"]
    if "window" in spec:
        parts.append("created_after+created_before (1 day)")
    return " & ".join(parts) or "(no filter)"


def cursor_for(created_at: datetime, job: str) -> str:
    """The opaque cursor the api issues (api/routes/jobs._encode_cursor)."""
    raw = json.dumps([created_at.isoformat(), job]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def timed_get(client: Connection, path: str, params: dict[str, str] | None = None) -> float:
    """Seconds for one GET answered 200 (the request's bytes are prepared before the clock)."""
    request = client.prepare("GET", path, query=params)
    started = time.perf_counter()
    status, body = await client.send(request)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"GET {path} {params}: {status} {body[:300]!r}")
    return elapsed


async def measure(client: Connection, db: psycopg.Connection[Any], args: argparse.Namespace) -> Any:
    rng = random.Random(args.seed + 1)
    sample = db.execute(
        "SELECT created_at, id FROM jobs TABLESAMPLE SYSTEM (0.2) REPEATABLE (8)"
    ).fetchall()
    pending = [r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'pending'").fetchall()]
    oldest, newest = db.execute("SELECT min(created_at), max(created_at) FROM jobs").fetchone()  # type: ignore[misc]
    middle = oldest + (newest - oldest) / 2
    for _ in range(args.warmup):
        await timed_get(client, f"/jobs/{rng.choice(sample)[1]}")
        await timed_get(client, "/jobs", {"cursor": cursor_for(*rng.choice(sample))})
    results: dict[str, Any] = {
        # The HTTP floor of this machine at this moment: the same client loop, no database.
        "healthz": latency_ms([await timed_get(client, "/healthz") for _ in range(args.requests)]),
        "get_random": latency_ms(
            [
                await timed_get(client, f"/jobs/{rng.choice(sample)[1]}")
                for _ in range(args.requests)
            ]
        ),
        "get_pending": latency_ms(
            [
                await timed_get(client, f"/jobs/{rng.choice(pending)}")
                for _ in range(args.requests // 4)
            ]
        ),
        "lists": [],
    }
    print(f"GET /jobs/id: {results['get_random']}", file=sys.stderr, flush=True)
    for spec in FILTERS:
        params = filter_params(spec, middle)
        # Bounded by count and by time: a slow filter stops after --filter-seconds.
        first: list[float] = []
        deadline = time.monotonic() + args.filter_seconds
        while len(first) < args.list_requests and (not first or time.monotonic() < deadline):
            first.append(await timed_get(client, "/jobs", params))
        deep: list[float] = []
        deadline = time.monotonic() + args.filter_seconds
        while len(deep) < args.list_requests and (not deep or time.monotonic() < deadline):
            created, job = rng.choice(sample)
            if "window" in spec:  # a keyset inside the window, as paging it gives
                created = middle + timedelta(seconds=rng.uniform(0, 86400))
            deep.append(
                await timed_get(client, "/jobs", {**params, "cursor": cursor_for(created, job)})
            )
        row = {
            "filter": label(spec),
            "first_page": latency_ms(first),
            "cursor_page": latency_ms(deep),
        }
        print(f"{row}", file=sys.stderr, flush=True)
        results["lists"].append(row)
    results["middle"] = middle
    results["sample_row"] = rng.choice(sample)
    results["sample"] = sample
    return results


async def profile(client: Connection, pid: int, sample: list[Any], seconds: int, out: Path) -> None:
    """py-spy flame graph of the api while the client alternates GET /jobs/{id} and a
    filtered list page."""
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
         "--duration", str(seconds), "--rate", "200", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    rng = random.Random(9)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and spy.poll() is None:
        created, job = rng.choice(sample)
        await timed_get(client, f"/jobs/{job}")
        await timed_get(client, "/jobs", {"status": "failed", "cursor": cursor_for(created, job)})
    _, errors = spy.communicate(timeout=60)
    if spy.returncode != 0:
        print(f"py-spy failed: {errors.decode()[-500:]}", file=sys.stderr)


def explain_lists(url: str, middle: datetime, keyset: tuple[datetime, str]) -> list[dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the SQL jobs.list_jobs sends, first page and cursor page."""
    engine = sa.create_engine(url, pool_size=1)
    plans = []
    try:
        for spec in FILTERS:
            params = filter_params(spec, middle)
            for after in (None, keyset):
                sent: list[tuple[str, Any]] = []

                def capture(
                    _c: Any, _cur: Any, statement: str, parameters: Any, *_: Any, into: Any = sent
                ) -> None:
                    into.append((statement, parameters))

                with engine.connect() as conn:
                    sa.event.listen(conn, "before_cursor_execute", capture)
                    jobs_repo.list_jobs(
                        conn,
                        status=params.get("status"),
                        type_=params.get("type"),
                        priority=params.get("priority"),
                        created_after=datetime.fromisoformat(params["created_after"])
                        if "created_after" in params
                        else None,
                        created_before=datetime.fromisoformat(params["created_before"])
                        if "created_before" in params
                        else None,
                        after=after,
                        limit=51,
                    )
                    sa.event.remove(conn, "before_cursor_execute", capture)
                    statement, parameters = sent[0]
                    lines = conn.exec_driver_sql(
                        f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters
                    ).scalars()
                    plan = "\n".join(lines)
                    conn.rollback()
                execution = float(plan.rsplit("Execution Time: ", 1)[1].split(" ")[0])
                plans.append(
                    {
                        "filter": label(spec),
                        "page": "cursor" if after else "first",
                        "execution_ms": execution,
                        "plan": plan,
                    }
                )
    finally:
        engine.dispose()
    return plans


async def measure_api(
    client: Connection, db: psycopg.Connection[Any], args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    """measure(), then the profile if asked for, on one keep-alive connection."""
    try:
        results = await measure(client, db, args)
        sample = results.pop("sample")
        if args.profile:
            out = RESULTS_DIR / "large_table_api_profile.svg"
            await profile(client, pid, sample, args.profile, out)
        return dict(results)
    finally:
        client.close()


# --- report -----------------------------------------------------------------------------

_SCAN = re.compile(
    r"(?:Index Scan|Index Only Scan|Bitmap Index Scan)(?: Backward)? (?:using|on) (\S+)"
    r"|Seq Scan on (\S+)"
)


def markdown(results: dict[str, Any]) -> str:
    facts, get, pend = results["facts"], results["get_random"], results["get_pending"]
    floor = results["healthz"]
    misses = [
        r["filter"]
        for r in results["lists"]
        if max(r["first_page"]["p99"], r["cursor_page"]["p99"]) > 20
    ]
    lines = [
        SECTION,
        "",
        f"Command: `{command_line()}`. Measured {results['measured_at']} on the shared 2-core VM "
        f"(PostgreSQL 15, default settings; 1-minute load average {results['load'][0]:.1f} at "
        f"start, {results['load'][1]:.1f} at end). One api process (uvicorn as scripts/run.sh "
        "starts it, with an API key), one client (bench/http_load.Connection: raw HTTP/1.1 "
        "over asyncio), concurrency 1, keep-alive; "
        f"{results['warmup']} warm-up requests of each kind first.",
        "",
        f"Table: {facts['jobs']:,} jobs ({facts['jobs_size']} with indexes) over "
        f"{results['days']} days, {facts['job_dependencies']:,} dependency edges, "
        f"{facts['job_events']:,} job_events rows ({facts['events_size']}); database "
        f"{facts['db_size']}. Statuses: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(facts["by_status"].items()))
        + ". Filled in "
        + " + ".join(f"{v:.0f} s {k}" for k, v in results["fill_seconds"].items())
        + ".",
        "",
        "| request | n | p50 | p99 | max | target p99 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| baseline: GET /healthz (no database; the HTTP floor of the loaded machine) | "
        f"{floor['n']} | {floor['p50']:.2f} ms | {floor['p99']:.2f} ms | {floor['max']:.1f} ms "
        "| |",
        f"| GET /jobs/{{id}}, random ids | {get['n']} | {get['p50']:.2f} ms | "
        f"**{get['p99']:.2f} ms** | {get['max']:.1f} ms | 5 ms |",
        f"| GET /jobs/{{id}}, random pending ids (waiting_reason replays admission) | "
        f"{pend['n']} | {pend['p50']:.2f} ms | **{pend['p99']:.2f} ms** | {pend['max']:.1f} ms "
        "| 5 ms |",
    ]
    for row in results["lists"]:
        for page in ("first_page", "cursor_page"):
            figures = row[page]
            lines.append(
                f"| GET /jobs {row['filter']}, {page.replace('_', ' ')} (limit 50) | "
                f"{figures['n']} | {figures['p50']:.2f} ms | **{figures['p99']:.2f} ms** | "
                f"{figures['max']:.1f} ms | 20 ms |"
            )
    lines += [
        "",
        "Server execution time of each list query (EXPLAIN ANALYZE of the SQL "
        "`jobs.list_jobs` sends, limit 51; full plans in "
        "bench/results/large_table_explain.txt):",
        "",
        "| filter | page | execution | index used |",
        "|---|---|---:|---|",
    ]
    for plan in results["explain"]:
        used = sorted(
            {"seq scan " + b if b else a for a, b in _SCAN.findall(plan["plan"]) if a or b}
        )
        lines.append(
            f"| {plan['filter']} | {plan['page']} | {plan['execution_ms']:.2f} ms | "
            f"{', '.join(used) or 'seq scan'} |"
        )
    lines += [
        "",
        f"Lists over the 20 ms target: {', '.join(misses) if misses else 'none'}.",
        "",
        "",  # a blank line before the next section
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--active", type=int, default=50_000, help="newest jobs still live")
    parser.add_argument("--events-jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=2000, help="GET /jobs/{id} requests")
    parser.add_argument("--list-requests", type=int, default=200, help="per filter and page")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--filter-seconds", type=float, default=20, help="time bound per filter and page"
    )
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--profile", type=int, default=0, help="seconds of py-spy on the api (0: none)"
    )
    parser.add_argument("--database", default=NAME, help="database and vhost name")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--reuse", action="store_true", help="measure a kept database")
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "days": args.days,
        "warmup": args.warmup,
        "load": [__import__("os").getloadavg()[0]],
    }
    url = f"{PG}/{args.database}"
    product: Product | None = None
    try:
        if args.reuse:
            env = product_env(args.database)
            fill = RESULTS_DIR / "large_table_fill.json"  # the kept database's fill times
            results["fill_seconds"] = json.loads(fill.read_text()) if fill.exists() else {}
        else:
            env = fresh_services(args.database)
            print(f"filling {args.rows:,} rows ...", file=sys.stderr, flush=True)
            with psycopg.connect(url) as conn:
                results["fill_seconds"] = load(conn, args)
            (RESULTS_DIR / "large_table_fill.json").write_text(json.dumps(results["fill_seconds"]))
        with psycopg.connect(url, autocommit=True) as db:
            results["facts"] = table_facts(db)
            print(f"{results['facts']} {results['fill_seconds']}", file=sys.stderr, flush=True)
            product = Product(env=env, log_dir=Path(tempfile.mkdtemp(prefix="scale-large-")))
            product.start_api()
            results["api_pid"] = product.processes[0].popen.pid
            client = Connection(product.base_url, bearer(product.key("admin")))
            results.update(asyncio.run(measure_api(client, db, args, results["api_pid"])))
        results["explain"] = explain_lists(
            env["TASKQ_DATABASE_URL"], results["middle"], tuple(results["sample_row"])
        )
    finally:
        if product is not None:
            product.stop()
        if not args.keep:
            drop_services(args.database)
    results["load"].append(__import__("os").getloadavg()[0])
    results["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "large_table_explain.txt").write_text(
        "\n\n".join(
            f"-- {p['filter']} ({p['page']} page): {p['execution_ms']} ms\n{p['plan']}"
            for p in results["explain"]
        )
    )
    section = markdown(results)
    print(json.dumps({k: v for k, v in results.items() if k != "explain"}, indent=1, default=str))
    print(section)
    if args.results_file:
        write_section(args.results_file, SECTION, section)


if __name__ == "__main__":
    main()
