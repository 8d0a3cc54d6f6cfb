"""Performance test (shared scenario performance_test.json): submit 1000 jobs of mixed
priorities and measure acceptance time, end-to-end drain, API memory growth, and query
latency as the jobs table grows.

Starts its own api and worker processes against a dedicated database and vhost
(`taskq_perf`), exactly as scripts/run.sh starts them. Baseline measured in the same run:
the same client loop against GET /healthz (the HTTP floor of this machine).

    .venv/bin/python bench/submit.py --runs 3 --sizes 10000,100000,1000000

Prints a markdown report; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.product import Product, bearer, wait_until  # noqa: E402

DB = "taskq_perf"
PG = "postgresql://postgres@127.0.0.1:5432"
PRIORITIES = ["critical", "high", "normal", "low"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prepare_services() -> dict[str, str]:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB}")
    for args in (["add_vhost", DB], ["set_permissions", "-p", DB, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *args], capture_output=True, check=False)
    subprocess.run(
        ["rabbitmqctl", "purge_queue", "-p", DB, "taskq.jobs"], capture_output=True, check=False
    )
    env = {
        "TASKQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}",
        "TASKQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{DB}",
        "TASKQ_LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**__import__("os").environ, **env},
        check=True,
        capture_output=True,
    )
    return env


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def timed_requests(
    client: httpx.Client, requests: list[tuple[str, str, Any]], concurrency: int
) -> tuple[float, list[float]]:
    """Send requests from `concurrency` threads; returns (wall seconds, latencies)."""

    def one(request: tuple[str, str, Any]) -> float:
        method, path, body = request
        started = time.perf_counter()
        response = client.request(method, path, json=body)
        if response.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, requests))
    return time.perf_counter() - started, latencies


def job_bodies(count: int, rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "type": "noop",
            "priority": rng.choice(PRIORITIES),
            "payload": {"n": i},
            "resource_requirements": {"cpu_units": 1, "memory_mb": 64},
        }
        for i in range(count)
    ]


def count_terminal(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM jobs WHERE status IN ('completed','failed','cancelled')"
        ).fetchone()
        return int(row[0]) if row else 0


def drained(database_url: str, target: int) -> Callable[[], bool]:
    """A predicate: at least `target` jobs have finished."""
    return lambda: count_terminal(database_url) >= target


def fill_completed(database_url: str, rows: int) -> None:
    """Grow the jobs table with completed jobs (COPY), as history accumulates in production."""
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn:
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY jobs (id, type, priority, payload, cpu_units, memory_mb, max_attempts, "
                "backoff_multiplier, initial_delay_seconds, max_delay_seconds, timeout_seconds, "
                "request_hash, status, attempts, created_at, started_at, finished_at) FROM STDIN"
            ) as copy,
        ):
            stamp = time.time_ns()
            for i in range(rows):
                created = now - timedelta(seconds=rows - i)
                copy.write_row(
                    (
                        f"hist_{stamp}_{i}",
                        "send_email" if i % 3 else "data_export",
                        PRIORITIES[i % 4],
                        "{}",
                        1,
                        64,
                        3,
                        2.0,
                        1.0,
                        300.0,
                        300.0,
                        "x",
                        "completed",
                        1,
                        created,
                        created,
                        created + timedelta(milliseconds=5),
                    )
                )
        conn.commit()
        conn.execute("ANALYZE jobs")


def query_latencies(client: httpx.Client, sample_id: str, repeats: int = 200) -> dict[str, float]:
    probes = {
        "GET /jobs/{id}": f"/jobs/{sample_id}",
        "GET /jobs?status=completed&limit=50": "/jobs?status=completed&limit=50",
        "GET /jobs?type=data_export&limit=50": "/jobs?type=data_export&limit=50",
        "GET /jobs?limit=50": "/jobs?limit=50",
    }
    result = {}
    for name, path in probes.items():
        latencies = []
        for _ in range(repeats):
            started = time.perf_counter()
            client.get(path).raise_for_status()
            latencies.append(time.perf_counter() - started)
        result[name] = percentile(latencies, 0.5) * 1000
        result[name + " p99"] = percentile(latencies, 0.99) * 1000
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args()
    rng = random.Random(7)
    env = prepare_services()
    database_url = f"{PG}/{DB}"
    log_dir = Path(tempfile.mkdtemp(prefix="taskq-perf-"))
    product = Product(env=env, log_dir=log_dir)
    report: dict[str, Any] = {"runs": []}
    try:
        api = product.start_api()
        product.start_worker(processes=2, threads=8)
        client = httpx.Client(
            base_url=product.base_url,
            headers=bearer(product.key()),
            timeout=60,
            limits=httpx.Limits(max_connections=args.concurrency),
        )
        client.get("/healthz").raise_for_status()
        for _run in range(args.runs):
            rss_before = rss_mb(api.popen.pid)
            done_before = count_terminal(database_url)
            base_wall, base_lat = timed_requests(
                client, [("GET", "/healthz", None)] * args.jobs, args.concurrency
            )
            bodies = [("POST", "/jobs", b) for b in job_bodies(args.jobs, rng)]
            first_submit = time.perf_counter()
            wall, latencies = timed_requests(client, bodies, args.concurrency)
            wait_until(
                drained(database_url, done_before + args.jobs),
                300,
                0.05,
                "the jobs to drain",
            )
            rest_drain = time.perf_counter() - first_submit
            drain_wall = time.perf_counter()
            batch_wall, _ = timed_requests(
                client, [("POST", "/jobs/batch", {"jobs": job_bodies(args.jobs, rng)})], 1
            )
            wait_until(
                drained(database_url, done_before + 2 * args.jobs),
                300,
                0.05,
                "the batch to drain",
            )
            batch_drain = time.perf_counter() - drain_wall
            report["runs"].append(
                {
                    "accept_seconds": wall,
                    "accept_per_second": args.jobs / wall,
                    "accept_p50_ms": percentile(latencies, 0.5) * 1000,
                    "accept_p99_ms": percentile(latencies, 0.99) * 1000,
                    "submit_to_drained_seconds": rest_drain,
                    "healthz_seconds": base_wall,
                    "healthz_p50_ms": percentile(base_lat, 0.5) * 1000,
                    "batch_accept_seconds": batch_wall,
                    "batch_submit_to_drained_seconds": batch_drain,
                    "api_rss_mb_before": rss_before,
                    "api_rss_mb_after": rss_mb(api.popen.pid),
                }
            )
        # Query performance as the table grows.
        growth = []
        sample = client.post("/jobs", json={"type": "noop"}).json()["job_id"]
        total = 0
        for size in [int(s) for s in args.sizes.split(",") if s]:
            fill_completed(database_url, size - total)
            total = size
            timings = query_latencies(client, sample)
            _post_wall, post_lat = timed_requests(
                client, [("POST", "/jobs", b) for b in job_bodies(200, rng)], args.concurrency
            )
            timings["POST /jobs"] = percentile(post_lat, 0.5) * 1000
            timings["POST /jobs p99"] = percentile(post_lat, 0.99) * 1000
            growth.append({"rows": size, "ms": timings, "api_rss_mb": rss_mb(api.popen.pid)})
        report["growth"] = growth
    finally:
        product.stop()
    print_report(report, args)


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    runs = report["runs"]
    out = io.StringIO()
    out.write(f"Submitting {args.jobs} jobs, {args.concurrency} client threads, ")
    out.write(f"medians of {len(runs)} runs (2 worker processes x 8 threads)\n\n")
    out.write("| measure | median |\n|---|---|\n")
    for key in (
        "accept_seconds",
        "accept_per_second",
        "accept_p50_ms",
        "accept_p99_ms",
        "submit_to_drained_seconds",
        "healthz_seconds",
        "healthz_p50_ms",
        "batch_accept_seconds",
        "batch_submit_to_drained_seconds",
    ):
        out.write(f"| {key} | {median(runs, key):.3f} |\n")
    ratio = median(runs, "accept_seconds") / median(runs, "healthz_seconds")
    out.write(f"| accept time / healthz time (same run) | {ratio:.2f} |\n")
    out.write(
        "\nAPI resident memory (MB) per run, before -> after: "
        + ", ".join(f"{r['api_rss_mb_before']:.0f} -> {r['api_rss_mb_after']:.0f}" for r in runs)
        + "\n\n"
    )
    out.write("Query latency (ms, p50 / p99 of 200) as the jobs table grows:\n\n")
    growth = report["growth"]
    names = [k for k in growth[0]["ms"] if not k.endswith(" p99")]
    out.write("| rows | " + " | ".join(names) + " | api RSS MB |\n")
    out.write("|---" * (len(names) + 2) + "|\n")
    for g in growth:
        cells = [f"{g['ms'][n]:.2f} / {g['ms'][n + ' p99']:.2f}" for n in names]
        out.write(f"| {g['rows']:,} | " + " | ".join(cells) + f" | {g['api_rss_mb']:.0f} |\n")
    print(out.getvalue())
    Path(ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "submit.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
