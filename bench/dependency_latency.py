"""Scale (issue 8): parent completed -> child started latency at half load.

Starts the api, two workers (1 process x 8 threads each, as scripts/run.sh starts them with
its default of two) and the scheduler against a database and vhost of its own
(`taskq_scale_deps`, dropped and recreated), token pool sized so that tokens never limit
no-op throughput (bench/compare_services.POOL_CPU_UNITS). In one run:

1. idle baseline: `--chains` / 4 parent -> child chains of `--length` no-op jobs, one at a
   time, nothing else running;
2. max rate: `--probe-jobs` no-op jobs submitted at once; rate = jobs / (last finished_at
   - first started_at) (reported; a burst drains with bigger flushes than steady arrivals);
3. sustained rate: the background submitter (a batch every 0.1 s) offers 1.5 x that rate
   for 5 + `--sustain-seconds` s; completions per second over the last `--sustain-seconds`.
   The tens of thousands of dead rows it leaves stay for the next phase, left to autovacuum
   as in production (`--vacuum` vacuums them first, as this script did before);
4. half load: the background submitter posts no-op jobs at half the sustained rate while
   `--chains` chains are submitted one every `--chain-interval` seconds.

Latency of each edge = child started_at - parent finished_at, both from GET /jobs/{id}.
Reports p50/p99/max for the idle baseline and at half load, and the background rate
achieved. Bounded by `--timeout` seconds per phase.

    .venv/bin/python bench/dependency_latency.py --results-file evaluation_results.md

Targets at half load: p50 <= 20 ms, p99 <= 100 ms. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_services import POOL_CPU_UNITS, POOL_MEMORY_MB  # noqa: E402
from bench.results_file import report  # noqa: E402
from bench.scale_support import command_line, drop_services, fresh_services, latency_ms  # noqa: E402
from tests.support.product import Product, wait_until  # noqa: E402

NAME = "taskq_scale_deps"
SECTION = "## Scale: dependency latency at half load (issue 8)"
NOOP = {"type": "noop", "payload": {"duration_seconds": 0}}


def chain(prefix: str, length: int) -> list[dict[str, Any]]:
    ids = [f"{prefix}_{n}" for n in range(length)]
    return [
        {**NOOP, "job_id": job_id, "depends_on": ids[n - 1 : n] if n else []}
        for n, job_id in enumerate(ids)
    ]


def post_batch(client: httpx.Client, jobs: list[dict[str, Any]]) -> None:
    response = client.post("/jobs/batch", json={"jobs": jobs})
    if response.status_code != 201:
        raise RuntimeError(f"batch: {response.status_code} {response.text[:300]}")


def count_completed(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
    return int(row[0]) if row else 0


def count_unfinished(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM jobs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
    ).fetchone()
    return int(row[0]) if row else 0


def edge_latencies(client: httpx.Client, chains: list[list[dict[str, Any]]]) -> list[float]:
    """child started_at - parent finished_at for every edge, from GET /jobs/{id}."""
    latencies = []
    for jobs in chains:
        seen = [client.get(f"/jobs/{job['job_id']}").json() for job in jobs]
        for parent, child in pairwise(seen):
            assert parent["status"] == child["status"] == "completed", (parent, child)
            done = datetime.fromisoformat(parent["finished_at"])
            latencies.append((datetime.fromisoformat(child["started_at"]) - done).total_seconds())
    return latencies


def run_chains(
    client: httpx.Client,
    db: psycopg.Connection[Any],
    prefix: str,
    count: int,
    args: argparse.Namespace,
    wait_each: bool,
) -> list[list[dict[str, Any]]]:
    """Submit `count` chains, `--chain-interval` apart (or each after the last finished)."""
    chains = [chain(f"{prefix}{n:04d}", args.length) for n in range(count)]
    for jobs in chains:
        post_batch(client, jobs)
        if wait_each:
            last: str = jobs[-1]["job_id"]

            def chain_done(job_id: str = last) -> bool:
                return bool(client.get(f"/jobs/{job_id}").json()["status"] == "completed")

            wait_until(
                chain_done,
                args.timeout,
                0.02,
                f"chain {last}",
            )
        else:
            time.sleep(args.chain_interval)
    last_ids = [jobs[-1]["job_id"] for jobs in chains]
    wait_until(
        lambda: all(client.get(f"/jobs/{i}").json()["status"] == "completed" for i in last_ids),
        args.timeout,
        0.5,
        f"{prefix} chains",
    )
    return chains


def max_rate(client: httpx.Client, db: psycopg.Connection[Any], args: argparse.Namespace) -> float:
    """No-op jobs per second with a full backlog: all `--probe-jobs` submitted at once."""
    for start in range(0, args.probe_jobs, 1000):
        post_batch(client, [NOOP] * min(1000, args.probe_jobs - start))
    wait_until(lambda: count_unfinished(db) == 0, args.timeout, 0.5, "the probe jobs")
    row = db.execute(
        "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM jobs "
        "WHERE id NOT LIKE 'idle%'"
    ).fetchone()
    assert row is not None
    return float(row[0]) / float(row[1])


class Background(threading.Thread):
    """Posts no-op jobs at `rate` per second, a batch every 0.1 s."""

    def __init__(self, client: httpx.Client, rate: float) -> None:
        super().__init__(daemon=True)
        self.client, self.rate = client, rate
        self.stop = threading.Event()
        self.submitted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                due = int(self.rate * (time.monotonic() - started)) - self.submitted
                if due > 0:
                    post_batch(self.client, [NOOP] * due)
                    self.submitted += due
                time.sleep(0.1)
        except BaseException as error:  # reported by the main thread
            self.error = error


def sustained_rate(
    client: httpx.Client, db: psycopg.Connection[Any], offered: float, args: argparse.Namespace
) -> float:
    """No-op jobs per second the system keeps up with while jobs arrive as the background
    sends them (a batch every 0.1 s), offered faster than it drains: completions counted
    over `--sustain-seconds` after 5 s to settle; the backlog drained before returning."""
    background = Background(client, offered)
    background.start()
    time.sleep(5)
    before, started = count_completed(db), time.monotonic()
    time.sleep(args.sustain_seconds)
    rate = (count_completed(db) - before) / (time.monotonic() - started)
    background.stop.set()
    background.join()
    if background.error is not None:
        raise RuntimeError("sustained-rate submitter failed") from background.error
    wait_until(lambda: count_unfinished(db) == 0, args.timeout, 0.5, "the sustained probe")
    if args.vacuum:
        # The probe leaves tens of thousands of dead rows and index entries behind: by
        # default they stay, as they would in production, left to autovacuum.
        db.execute("VACUUM (ANALYZE) jobs, leases, job_events, resource_pool")
    return rate


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = fresh_services(NAME)
    env |= {
        "TASKQ_LOG_LEVEL": "INFO",  # run.sh's default
        "TASKQ_POOL_CPU_UNITS": str(POOL_CPU_UNITS),
        "TASKQ_POOL_MEMORY_MB": str(POOL_MEMORY_MB),
    }
    url = env["TASKQ_DATABASE_URL"].replace("+psycopg", "")
    product = Product(env=env, log_dir=Path(tempfile.mkdtemp(prefix="scale-deps-")))
    result: dict[str, Any] = {"load": [os.getloadavg()[0]], "pool_cpu_units": POOL_CPU_UNITS}
    try:
        product.start_api()
        product.start_worker(processes=1, threads=8)
        product.start_worker(processes=1, threads=8)
        product.start_scheduler()
        client = product.client_with("admin")
        client.timeout = httpx.Timeout(120)
        with psycopg.connect(url, autocommit=True) as db:
            idle = run_chains(client, db, "idle", max(args.chains // 4, 5), args, wait_each=True)
            result["idle"] = latency_ms(edge_latencies(client, idle))
            print(f"idle: {result['idle']}", file=sys.stderr, flush=True)
            result["max_rate"] = round(max_rate(client, db, args), 1)
            print(f"max rate: {result['max_rate']} jobs/s", file=sys.stderr, flush=True)
            # Half load is half of what the system sustains with jobs arriving as the
            # background sends them: a burst's drain rate overstates it (its flushes are
            # bigger), and half of it was past capacity once the workers got faster.
            result["sustained_rate"] = round(
                sustained_rate(product.client_with("admin"), db, 1.5 * result["max_rate"], args),
                1,
            )
            print(f"sustained: {result['sustained_rate']} jobs/s", file=sys.stderr, flush=True)
            background = Background(product.client_with("admin"), result["sustained_rate"] / 2)
            before, started = count_completed(db), time.monotonic()
            background.start()
            time.sleep(5)  # let the background load settle
            loaded = run_chains(client, db, "load", args.chains, args, wait_each=False)
            background.stop.set()
            background.join()
            elapsed = time.monotonic() - started
            if background.error is not None:
                raise RuntimeError("background submitter failed") from background.error
            result["background"] = {
                "target_rate": round(result["sustained_rate"] / 2, 1),
                "submitted_rate": round(background.submitted / elapsed, 1),
                "completed_rate": round((count_completed(db) - before) / elapsed, 1),
                "seconds": round(elapsed, 1),
            }
            result["half_load"] = latency_ms(edge_latencies(client, loaded))
            print(f"half load: {result['half_load']}", file=sys.stderr, flush=True)
    finally:
        product.stop()
        if not args.keep:
            drop_services(NAME)
    result["load"].append(os.getloadavg()[0])
    result["length"] = args.length
    result["probe_jobs"] = args.probe_jobs
    result["vacuum"] = args.vacuum
    return result


def markdown(r: dict[str, Any]) -> str:
    idle, half, bg = r["idle"], r["half_load"], r["background"]
    met = half["p50"] <= 20 and half["p99"] <= 100
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command_line()}`. Measured {r['measured_at']} on the shared 2-core VM "
            f"(1-minute load average {r['load'][0]:.1f} at start, {r['load'][1]:.1f} at end): "
            "api, two workers of 1 process x 8 threads (scripts/run.sh's default), the "
            f"scheduler; token pool {r['pool_cpu_units']} CPU units so that tokens never "
            f"limit no-op throughput. Chains of {r['length']} no-op jobs (parent -> child), "
            "latency per edge = child `started_at` - parent `finished_at` from GET /jobs/{id}.",
            "",
            f"No-op rates measured in the same run: {r['max_rate']} jobs/s draining a burst "
            f"of {r['probe_jobs']:,} jobs submitted at once, {r['sustained_rate']} jobs/s "
            "sustained while jobs arrive as the background sends them (offered at 1.5 x the "
            "burst rate, completions over the probe's last seconds); "
            + (
                "the tables were vacuumed after that probe (`--vacuum`). "
                if r["vacuum"]
                else "the dead rows the probe left were not vacuumed (left to autovacuum, as "
                "in production). "
            )
            + "Half load = half the sustained rate: "
            f"background no-op jobs submitted at {bg['submitted_rate']} jobs/s (target "
            f"{bg['target_rate']}), completed at {bg['completed_rate']} jobs/s over "
            f"{bg['seconds']:.0f} s. Target p50 <= 20 ms and p99 <= 100 ms at half load: "
            f"**{'met' if met else 'missed'}**.",
            "",
            "| condition | edges | p50 | p99 | max |",
            "|---|---:|---:|---:|---:|",
            f"| idle (one chain at a time, nothing else running) | {idle['n']} | "
            f"{idle['p50']:.1f} ms | {idle['p99']:.1f} ms | {idle['max']:.1f} ms |",
            f"| half load | {half['n']} | **{half['p50']:.1f} ms** | **{half['p99']:.1f} ms** "
            f"| {half['max']:.1f} ms |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=200, help="chains at half load")
    parser.add_argument("--length", type=int, default=3, help="jobs per chain")
    parser.add_argument("--chain-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--probe-jobs", type=int, default=4000, help="jobs of the max-rate probe")
    parser.add_argument(
        "--sustain-seconds", type=float, default=10, help="seconds the sustained rate is counted"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument("--keep", action="store_true", help="keep database and vhost")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM the tables after the sustained probe (by default its garbage stays)",
    )
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()
    result = run(args)
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report(result, SECTION, markdown(result), args.results_file)


if __name__ == "__main__":
    main()
