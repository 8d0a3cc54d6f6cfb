"""Dependency DAGs (issue 3): a 10,000-job layered DAG submitted as one batch.

Measures, against the real api, RabbitMQ, PostgreSQL and two worker processes:
- submit time of POST /jobs/batch for the whole DAG (median of --runs runs, scheduler
  paused so nothing runs meanwhile), against a baseline measured in the same run: the same
  10,000 jobs without any dependency;
- the hop latency without queueing: a --chain job chain executed alone, so exactly one
  job is ready at a time (child started_at minus parent finished_at);
- after one executed run of the DAG: the dependency latency of every edge-gated job (its
  started_at minus the latest finished_at of its dependencies) p50/p99/max, and the
  makespan (first byte of the submission to the last job finished). With database access
  the latency is split into "waiting for tokens" (dependencies done -> tokens granted) and
  "pickup" (tokens granted -> started: publish, RabbitMQ, worker claim).

By default it starts its own api and two worker processes (tests/support/product.Product)
against a dedicated database and vhost (`taskq_dagbench`), dropped and recreated first;
`--base-url` measures a running product instead (then nothing is truncated: the paused
submit-time runs are cleaned up by cancelling their roots, which cascades through the DAG,
and the no-dependency baseline is skipped).

    .venv/bin/python bench/dag_batch.py --runs 3 --pool-cpu-units 16 \
        --results-file evaluation_results.md

Prints JSON and a markdown section; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_file import report  # noqa: E402
from tests.support.product import Product, bearer, wait_until  # noqa: E402

NAME = "taskq_dagbench"
PG = "postgresql://postgres@127.0.0.1:5432"
SECTION = "## Dependency DAGs (issue 3)"
COMMAND = (
    ".venv/bin/python bench/dag_batch.py --runs 3 --pool-cpu-units 16 "
    "--results-file evaluation_results.md"
)


# --- the graph ------------------------------------------------------------------------


def layered_dag(prefix: str, layers: int, width: int, seed: int) -> list[dict[str, Any]]:
    """`layers` x `width` noop jobs; each job of layer l > 0 depends on 1-3 jobs of l - 1."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []
    previous: list[str] = []
    for layer in range(layers):
        current = [f"{prefix}_l{layer:03d}_{i:03d}" for i in range(width)]
        for job_id in current:
            depends_on = rng.sample(previous, k=min(len(previous), rng.randint(1, 3)))
            jobs.append(
                {
                    "job_id": job_id,
                    "type": "noop",
                    "payload": {"duration_seconds": 0},
                    "depends_on": depends_on,
                }
            )
        previous = current
    return jobs


def without_dependencies(jobs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [{**job, "job_id": f"{prefix}_{job['job_id']}", "depends_on": []} for job in jobs]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- the product ----------------------------------------------------------------------


def prepare_services(pool_cpu_units: int | None) -> dict[str, str]:
    """A fresh database and vhost of the benchmark's own, migrated."""
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {NAME}")
    subprocess.run(["rabbitmqctl", "delete_vhost", NAME], capture_output=True, check=False)
    for args in (["add_vhost", NAME], ["set_permissions", "-p", NAME, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *args], capture_output=True, check=True)
    env = {
        "TASKQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{NAME}",
        "TASKQ_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{NAME}",
        "TASKQ_LOG_LEVEL": "WARNING",
    }
    if pool_cpu_units is not None:
        env["TASKQ_POOL_CPU_UNITS"] = str(pool_cpu_units)
    subprocess.run(
        [str(Path(sys.executable).parent / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return env


def truncate(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE jobs, job_dependencies, job_events, leases, dead_letters")
        conn.execute("UPDATE resource_pool SET cpu_used = 0, memory_used = 0")


# --- measurements ---------------------------------------------------------------------


def submit(client: httpx.Client, jobs: list[dict[str, Any]]) -> tuple[float, float]:
    """POST the batch; returns (wall-clock start, seconds until the 201 arrived)."""
    body = json.dumps({"jobs": jobs})
    started_wall, started = time.time(), time.perf_counter()
    response = client.post(
        "/jobs/batch", content=body, headers={"content-type": "application/json"}
    )
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"batch rejected: {response.status_code} {response.text[:500]}")
    return started_wall, elapsed


def cancel_roots(client: httpx.Client, jobs: list[dict[str, Any]]) -> float:
    """Cancel the jobs without dependencies; the cascade cancels the rest. Returns seconds."""
    started = time.perf_counter()
    for job in jobs:
        if not job["depends_on"]:
            response = client.patch(f"/jobs/{job['job_id']}/cancel")
            if response.status_code not in (200, 202, 409):
                raise RuntimeError(f"cancel failed: {response.status_code} {response.text}")
    return time.perf_counter() - started


def completed_count(client: httpx.Client) -> int:
    return int(client.get("/stats").json()["jobs_by_status"]["completed"])


def fetch_jobs(client: httpx.Client, ids: set[str], created_after: str) -> dict[str, Any]:
    """The run's jobs through GET /jobs pages (newest first, 500 a page)."""
    found: dict[str, Any] = {}
    cursor: str | None = None
    for _ in range(1000):
        params: dict[str, Any] = {"limit": 500, "created_after": created_after}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/jobs", params=params).json()
        found |= {j["job_id"]: j for j in page["items"] if j["job_id"] in ids}
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return found


def edge_latencies(jobs: list[dict[str, Any]], seen: dict[str, Any]) -> list[float]:
    """started_at of each dependent minus the latest finished_at of its dependencies."""
    latencies = []
    for job in jobs:
        if job["depends_on"]:
            done = max(_at(seen[d]["finished_at"]) for d in job["depends_on"])
            latencies.append((_at(seen[job["job_id"]]["started_at"]) - done).total_seconds())
    return latencies


def latency_split(database_url: str, prefix: str) -> dict[str, dict[str, float]]:
    """From the database: dependencies done -> tokens granted -> started, per gated job."""
    query = """
        SELECT extract(epoch FROM g.granted - p.done) AS waiting_for_tokens,
               extract(epoch FROM c.started_at - g.granted) AS pickup
        FROM jobs c
        JOIN (SELECT d.job_id, max(j.finished_at) AS done FROM job_dependencies d
              JOIN jobs j ON j.id = d.depends_on GROUP BY d.job_id) p ON p.job_id = c.id
        JOIN (SELECT job_id, min(at) AS granted FROM job_events
              WHERE event = 'tokens_granted' GROUP BY job_id) g ON g.job_id = c.id
        WHERE c.id LIKE %s AND c.status = 'completed'
    """
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(query, (f"{prefix}\\_%",)).fetchall()
    split: dict[str, dict[str, float]] = {}
    for index, name in enumerate(("waiting_for_tokens", "pickup")):
        values = [float(r[index]) for r in rows]
        split[name] = {
            "p50": percentile(values, 0.5),
            "p99": percentile(values, 0.99),
            "max": max(values),
        }
    return split


def execute(client: httpx.Client, jobs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Submit a graph with the scheduler running; wait for it; time it from the job data."""
    size = len(jobs)
    before = completed_count(client)
    created_after = datetime.now().astimezone().isoformat()
    wall_start, submit_seconds = submit(client, jobs)
    progress = {"at": time.monotonic()}

    def all_completed() -> bool:
        done = completed_count(client) - before
        if time.monotonic() - progress["at"] > 15:
            progress["at"] = time.monotonic()
            print(f"executed run: {done} of {size} completed", file=sys.stderr)
        return done >= size

    wait_until(all_completed, timeout, 0.2, f"{size} jobs to complete")
    seen = fetch_jobs(client, {j["job_id"] for j in jobs}, created_after)
    assert len(seen) == size and all(j["status"] == "completed" for j in seen.values())
    latencies = edge_latencies(jobs, seen)
    makespan = max(_at(j["finished_at"]).timestamp() for j in seen.values()) - wall_start
    return {
        "jobs": size,
        "submit_seconds": submit_seconds,
        "makespan_seconds": makespan,
        "throughput_jobs_per_second": size / makespan,
        "dependency_latency_seconds": {
            "edges_gated_jobs": len(latencies),
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies),
        },
        "jobs_started_before_a_dependency_finished": sum(1 for x in latencies if x < 0),
    }


def run_benchmark(
    client: httpx.Client, args: argparse.Namespace, database_url: str | None
) -> dict[str, Any]:
    size = args.layers * args.width
    results: dict[str, Any] = {
        "jobs": size,
        "layers": args.layers,
        "width": args.width,
        "runs": args.runs,
    }
    stats = client.get("/stats").json()
    results["pool"] = {k: v["capacity"] for k, v in stats["tokens"].items()}
    results["load_average_1min_at_start"] = os.getloadavg()[0]

    # Hop latency without queueing: a chain, so one job at a time is ready.
    results["chain_run"] = execute(client, layered_dag("c", args.chain, 1, args.seed), 60)
    print("chain run done", file=sys.stderr)

    # Submit time, scheduler paused: the DAG, and the same jobs without dependencies.
    client.post("/scheduler/pause")
    dag_times, flat_times, cancel_times = [], [], []
    for run in range(args.runs):
        dag = layered_dag(f"s{run}", args.layers, args.width, args.seed + run)
        dag_times.append(submit(client, dag)[1])
        if database_url is not None:
            truncate(database_url)
            flat_times.append(submit(client, without_dependencies(dag, "flat"))[1])
            truncate(database_url)
        else:
            cancel_times.append(cancel_roots(client, dag))
        print(f"submit run {run + 1}: dag {dag_times[-1]:.2f} s", file=sys.stderr)
    results["submit_seconds"] = {
        "dag_median": statistics.median(dag_times),
        "dag_runs": dag_times,
    }
    if flat_times:
        results["submit_seconds"] |= {
            "no_dependencies_median": statistics.median(flat_times),
            "no_dependencies_runs": flat_times,
            "ratio_dag_to_no_dependencies": statistics.median(dag_times)
            / statistics.median(flat_times),
        }
    if cancel_times:
        results["cancel_roots_cascade_seconds_median"] = statistics.median(cancel_times)

    # One executed run of the whole DAG.
    client.post("/scheduler/resume")
    results["executed_run"] = execute(
        client, layered_dag("x", args.layers, args.width, args.seed), args.timeout
    )
    if database_url is not None:
        results["executed_run"]["latency_split_seconds"] = latency_split(database_url, "x")
    results["load_average_1min_at_end"] = os.getloadavg()[0]
    return results


# --- report ---------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    submit_s = results["submit_seconds"]
    run = results["executed_run"]
    latency = run["dependency_latency_seconds"]
    lines = [
        SECTION,
        "",
        f"Benchmark `bench/dag_batch.py`: a layered DAG of {results['jobs']:,} `noop` jobs "
        f"({results['layers']} layers x {results['width']} jobs, each job depending on 1-3 jobs "
        "of the layer before, `duration_seconds: 0`) submitted as one `POST /jobs/batch` to "
        "the real api with two worker processes (8 threads each), PostgreSQL and RabbitMQ "
        f"on this 2-core machine; token pool {results['pool']['cpu_units']} CPU units / "
        f"{results['pool']['memory_mb']} MB (each job takes 1 unit / 128 MB).",
        "",
    ]
    if results["pool"]["cpu_units"] != 8:
        lines += [
            "The pool is raised from the default 8 CPU units to match the 16 worker threads: "
            "with 8 units only 8 of these 1-unit jobs are in flight at once, and the run "
            "would measure the token cap rather than dependency handling.",
            "",
        ]
    lines += [
        "| figure | value |",
        "|---|---|",
        f"| submit time, DAG (median of {results['runs']}, scheduler paused) | "
        f"{submit_s['dag_median']:.2f} s (runs: "
        + ", ".join(f"{t:.2f}" for t in submit_s["dag_runs"])
        + ") |",
    ]
    if "no_dependencies_median" in submit_s:
        lines += [
            f"| submit time, same jobs without dependencies (baseline, median of "
            f"{results['runs']}) | {submit_s['no_dependencies_median']:.2f} s |",
            f"| ratio DAG / baseline | {submit_s['ratio_dag_to_no_dependencies']:.2f} |",
        ]
    lines += [
        f"| submit time in the executed run (scheduler running) | {run['submit_seconds']:.2f} s |",
        f"| makespan (submission start to last job finished) | "
        f"{run['makespan_seconds']:.1f} s ({run['throughput_jobs_per_second']:.0f} jobs/s) |",
        f"| dependency latency p50 / p99 / max (child started_at - latest parent finished_at, "
        f"{latency['edges_gated_jobs']:,} jobs) | {latency['p50'] * 1000:.0f} ms / "
        f"{latency['p99'] * 1000:.0f} ms / {latency['max'] * 1000:.0f} ms |",
    ]
    split = run.get("latency_split_seconds")
    if split:
        tokens, pickup = split["waiting_for_tokens"], split["pickup"]
        lines += [
            f"| of which waiting for tokens (deps done -> tokens granted) p50 / p99 | "
            f"{tokens['p50'] * 1000:.0f} ms / {tokens['p99'] * 1000:.0f} ms |",
            f"| of which pickup (tokens granted -> started: publish, RabbitMQ, claim) "
            f"p50 / p99 | {pickup['p50'] * 1000:.0f} ms / {pickup['p99'] * 1000:.0f} ms |",
        ]
    chain = results["chain_run"]
    hop = chain["dependency_latency_seconds"]
    violations = sum(r["jobs_started_before_a_dependency_finished"] for r in (run, chain))
    lines += [
        f"| hop latency without queueing: a {chain['jobs']}-job chain run alone, p50 / p99 / "
        f"max | {hop['p50'] * 1000:.0f} ms / {hop['p99'] * 1000:.0f} ms / "
        f"{hop['max'] * 1000:.0f} ms ({chain['makespan_seconds']:.1f} s for the chain) |",
        f"| jobs started before a dependency finished (DAG + chain) | {violations} |",
        f"| 1-minute load average of the machine at start / end (other work shares it) | "
        f"{results['load_average_1min_at_start']:.1f} / "
        f"{results['load_average_1min_at_end']:.1f} |",
        "",
        "Reading: up to a hundred jobs per layer become ready together and layers overlap, "
        "so in the 10,000-job run the dependency latency is mostly queueing behind other "
        "ready jobs for tokens and worker threads (the waiting-for-tokens row), not "
        "dependency bookkeeping: the completion that releases a job decrements its counter "
        "and admits it in the same transaction (an index lookup on "
        "ix_job_dependencies_depends_on, under 1 ms in EXPLAIN ANALYZE), and the chain row "
        "is the cost of one hop when nothing queues. The DAG's submit cost over the baseline "
        "is its ~20,000 edge rows and the linear graph checks (cycle search, topological "
        "order).",
        "",
        f"Reproduce (from the repository root, services running): `{COMMAND}`",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--chain", type=int, default=200, help="jobs of the latency chain")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=540, help="seconds for the run")
    parser.add_argument(
        "--pool-cpu-units", type=int, help="token pool CPU capacity of the started product"
    )
    parser.add_argument("--base-url", help="measure this running product instead")
    parser.add_argument("--api-key", help="a submit (or admin) key of that product")
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()

    product: Product | None = None
    database_url: str | None = None
    try:
        if args.base_url:
            headers = bearer(args.api_key) if args.api_key else {}
            client = httpx.Client(base_url=args.base_url, timeout=300, headers=headers)
        else:
            env = prepare_services(args.pool_cpu_units)
            database_url = env["TASKQ_DATABASE_URL"].replace("+psycopg", "")
            product = Product(env=env, log_dir=Path(tempfile.mkdtemp(prefix="dagbench-")))
            product.start_api()
            product.start_worker(processes=1, threads=8)
            product.start_worker(processes=1, threads=8)
            client = product.client_with("admin")
            client.timeout = httpx.Timeout(300)
        results = run_benchmark(client, args, database_url)
    finally:
        if product is not None:
            product.stop()
    report(results, SECTION, markdown(results), args.results_file)


if __name__ == "__main__":
    main()
