"""Time one worker flush in PostgreSQL alone, with and without generic plans (migration 0009).

    .venv/bin/python bench/flush_plans.py [--jobs-per-flush 4 16] [--flushes 200] [--rounds 3]

On a scratch database and vhost (migrated to head, dropped at the end) it admits a pool's worth of
no-op jobs, then repeats, on one connection: claim K admitted attempts (one
`taskq_worker_flush` call), then end those K (one call, which returns their tokens and
admits the next K). It reports the median time of each call and the server process's CPU
per job (read from /proc: the machine's other tenants disturb it less than the wall clock),
with the functions as migrated (`plan_cache_mode = force_generic_plan`) and with that
setting reset, in alternating rounds, so both see the same machine. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_support import PG, drop_services, fresh_services

DATABASE = "taskq_flush_plans"
FUNCTIONS = (
    "taskq_worker_flush(timestamptz, text, float8, float8, int, float8, jsonb)",
    "taskq_admit(timestamptz, int, float8, boolean, text[], int[], int[], int[])",
)
FLUSH = (
    "SELECT kind, job_id FROM taskq_worker_flush(%s::timestamptz, 'bench', 30, 60, 200, 300,"
    " %s::jsonb)"
)
POOL = 64


def fill(conn: psycopg.Connection, jobs: int) -> list[str]:
    """`jobs` ready no-op jobs; returns the first pool's worth, admitted."""
    conn.execute("DELETE FROM job_events; DELETE FROM leases; DELETE FROM jobs")
    conn.execute(
        "UPDATE resource_pool SET cpu_capacity = %(n)s, cpu_capacity_configured = %(n)s, "
        "memory_capacity = %(m)s, memory_capacity_configured = %(m)s, cpu_used = 0, "
        "memory_used = 0",
        {"n": POOL, "m": POOL * 128},
    )
    conn.execute(
        "INSERT INTO jobs (id, type, priority, payload, cpu_units, memory_mb, max_attempts, "
        "  backoff_multiplier, initial_delay_seconds, max_delay_seconds, timeout_seconds, "
        "  request_hash, status, rank, pending_since, created_at) "
        "SELECT 'bench_' || lpad(g::text, 8, '0'), 'noop', 'normal', '{}', 1, 128, 3, 2, 1, "
        "  60, 30, 'bench', 'pending', extract(epoch FROM now()) + g * 0.001, now(), now() "
        "FROM generate_series(1, %s) g",
        (jobs,),
    )
    conn.execute("ANALYZE jobs")
    rows = conn.execute(
        "SELECT admitted_job_id FROM taskq_admit(now(), 200, 300, true, '{}', '{}', '{}', '{}')"
    ).fetchall()
    return [job_id for (job_id,) in rows]


def flush(conn: psycopg.Connection, claims: list[str], ends: list[str]) -> list[tuple[str, str]]:
    items = {
        "claim_jobs": claims,
        "claim_attempts": [1] * len(claims),
        "claim_redelivered": [False] * len(claims),
        "done_jobs": ends,
        "done_attempts": [1] * len(ends),
        "done_results": ["null"] * len(ends),
    }
    return conn.execute(FLUSH, (datetime.now(UTC), json.dumps(items))).fetchall()


def backend_cpu_seconds(conn: psycopg.Connection) -> float:
    """CPU time (user + system) of this connection's server process so far: PostgreSQL runs
    on this machine (127.0.0.1), so its /proc entry is readable. A machine whose other
    tenants steal time slows the wall clock more than this."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    fields = Path(f"/proc/{row[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_round(generic: bool, per_flush: int, flushes: int) -> tuple[float, float, float]:
    """Median milliseconds of (claim, end with admission) over `flushes` cycles, and the
    server process's CPU microseconds per job over all of them."""
    with psycopg.connect(f"{PG}/{DATABASE}", autocommit=True) as conn:
        for signature in FUNCTIONS:
            setting = (
                "SET plan_cache_mode = force_generic_plan" if generic else "RESET plan_cache_mode"
            )
            conn.execute(f"ALTER FUNCTION {signature} {setting}")
    # A new connection: no plan cached from the other setting.
    with psycopg.connect(f"{PG}/{DATABASE}", autocommit=True) as conn:
        ready = fill(conn, per_flush * flushes + POOL)
        cpu_before = backend_cpu_seconds(conn)
        claim_times: list[float] = []
        end_times: list[float] = []
        for _ in range(flushes):
            batch, ready = ready[:per_flush], ready[per_flush:]
            started = time.perf_counter()
            claimed = flush(conn, batch, [])
            claim_times.append(time.perf_counter() - started)
            if sum(kind == "claimed" for kind, _ in claimed) != len(batch):
                raise RuntimeError(f"claimed {claimed} of {batch}")
            started = time.perf_counter()
            ended = flush(conn, [], batch)
            end_times.append(time.perf_counter() - started)
            ready += [job_id for kind, job_id in ended if kind == "admitted"]
        cpu_per_job = (backend_cpu_seconds(conn) - cpu_before) / (per_flush * flushes) * 1e6
    return statistics.median(claim_times) * 1000, statistics.median(end_times) * 1000, cpu_per_job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs-per-flush", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--flushes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fresh_services(DATABASE)  # a scratch database (and vhost), migrated to head
    try:
        results: dict[tuple[int, bool], list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):
            for per_flush in args.jobs_per_flush:
                for generic in (True, False):
                    results.setdefault((per_flush, generic), []).append(
                        run_round(generic, per_flush, args.flushes)
                    )
    finally:
        drop_services(DATABASE)
    print(f"median of {args.rounds} rounds x {args.flushes} flushes, one connection:")
    print(
        "| jobs per flush | plans | claim ms | end + admission ms | ms per job "
        "| server CPU us per job |"
    )
    print("|---|---|---|---|---|---|")
    for (per_flush, generic), rounds in sorted(
        results.items(), key=lambda kv: (kv[0][0], not kv[0][1])
    ):
        claim = statistics.median(r[0] for r in rounds)
        end = statistics.median(r[1] for r in rounds)
        cpu = statistics.median(r[2] for r in rounds)
        label = "generic (0009)" if generic else "server's choice"
        print(
            f"| {per_flush} | {label} | {claim:.2f} | {end:.2f} | {(claim + end) / per_flush:.2f} "
            f"| {cpu:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
