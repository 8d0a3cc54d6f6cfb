"""Scale (issue 8): worker resident memory over 100,000 no-op jobs.

Starts the api, one worker (1 process x 8 threads, as scripts/run.sh starts each worker)
and the scheduler against a database and vhost of its own (`taskq_scale_worker`, dropped
and recreated). A submitter keeps a backlog of `--backlog` ready jobs by POST /jobs/batch
in chunks of `--chunk` until `--jobs` no-op jobs are submitted; a sampler reads the resident
memory (RSS) of the worker's processes (the dramatiq master and its worker process) every
second. Reports RSS when `--warmup` jobs have completed and at the end (each the median of
the samples of the 10 s before that point), the growth in %, the peak, and RSS along the
run. Bounded by `--timeout` seconds: if the jobs are not all done by then, the figures
cover the jobs completed so far and say so.

    .venv/bin/python bench/worker_memory.py --jobs 100000 --results-file evaluation_results.md

Target: <= 10 % growth after warm-up. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_services import POOL_CPU_UNITS, POOL_MEMORY_MB  # noqa: E402
from bench.results_file import report  # noqa: E402
from bench.scale_support import command_line, drop_services, fresh_services, tree_rss  # noqa: E402
from tests.support.product import Product  # noqa: E402

NAME = "taskq_scale_worker"
SECTION = "## Scale: worker memory over 100,000 jobs (issue 8)"
MB = 1024 * 1024


def completed(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
    return int(row[0]) if row else 0


class Submitter(threading.Thread):
    """Keeps `backlog` jobs not yet completed, until `total` are submitted."""

    def __init__(self, client: httpx.Client, url: str, args: argparse.Namespace) -> None:
        super().__init__(daemon=True)
        self.client, self.url, self.args = client, url, args
        self.submitted = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as db:
                while self.submitted < self.args.jobs and not self.stop.is_set():
                    if self.submitted - completed(db) >= self.args.backlog:
                        time.sleep(0.2)
                        continue
                    size = min(self.args.chunk, self.args.jobs - self.submitted)
                    jobs = [{"type": "noop", "payload": {}} for _ in range(size)]
                    response = self.client.post("/jobs/batch", json={"jobs": jobs})
                    if response.status_code != 201:
                        raise RuntimeError(f"batch: {response.status_code} {response.text[:300]}")
                    self.submitted += size
        except BaseException as error:  # reported by the main thread
            self.error = error


def worker_roles(pid: int) -> dict[int, str]:
    """The dramatiq master (the started process) and its worker process(es)."""
    roles = {pid: "master"}
    for child in psutil.Process(pid).children(recursive=True):
        roles[child.pid] = "worker process" if "python" in child.name() else child.name()
    return roles


def around(samples: list[dict[str, Any]], at: float, key: str) -> float:
    """Median of `key` over the samples of the 10 s up to `at` (seconds since start)."""
    window = [s[key] for s in samples if at - 10 <= s["t"] <= at]
    return statistics.median(window) if window else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = fresh_services(NAME)
    env |= {
        "TASKQ_LOG_LEVEL": "INFO",  # run.sh's default: its per-job lines are part of the cost
        "TASKQ_POOL_CPU_UNITS": str(POOL_CPU_UNITS),
        "TASKQ_POOL_MEMORY_MB": str(POOL_MEMORY_MB),
    }
    url = env["TASKQ_DATABASE_URL"].replace("+psycopg", "")
    product = Product(env=env, log_dir=Path(tempfile.mkdtemp(prefix="scale-worker-")))
    samples: list[dict[str, Any]] = []
    try:
        product.start_api()
        worker = product.start_worker(processes=1, threads=8)
        product.start_scheduler()
        roles = worker_roles(worker.popen.pid)
        client = product.client_with("admin")
        client.timeout = httpx.Timeout(120)
        submitter = Submitter(client, url, args)
        started = time.monotonic()
        submitter.start()
        warm_at: float | None = None
        with psycopg.connect(url, autocommit=True) as db:
            while True:
                time.sleep(1)
                now = time.monotonic() - started
                done = completed(db)
                rss = tree_rss(worker.popen.pid)
                sample = {"t": round(now, 1), "completed": done, "total": sum(rss.values())}
                for pid, role in roles.items():
                    sample[role] = rss.get(pid, 0)
                samples.append(sample)
                if warm_at is None and done >= args.warmup:
                    warm_at = now
                if len(samples) % 30 == 0:
                    print(
                        f"{now:.0f} s: {done:,} completed, worker process "
                        f"{sample['worker process'] / MB:.1f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
                if submitter.error is not None:
                    raise RuntimeError("submitter failed") from submitter.error
                if done >= args.jobs or now > args.timeout:
                    break
                if worker.popen.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        submitter.stop.set()
        end = samples[-1]
        if warm_at is None:
            raise RuntimeError(f"only {end['completed']} jobs completed in {args.timeout} s")
        result: dict[str, Any] = {
            "jobs_requested": args.jobs,
            "jobs_completed": end["completed"],
            "seconds": end["t"],
            "rate_jobs_per_second": round(end["completed"] / end["t"], 1),
            "warmup_jobs": args.warmup,
            "warm_at_seconds": round(warm_at, 1),
            "timed_out": end["completed"] < args.jobs,
            "load": os.getloadavg()[0],
        }
        for role in ("worker process", "master", "total"):
            warm, final = around(samples, warm_at, role), around(samples, end["t"], role)
            after = [s[role] for s in samples if s["t"] >= warm_at]
            result[role] = {
                "warm_mb": round(warm / MB, 1),
                "end_mb": round(final / MB, 1),
                "growth_percent": round((final - warm) / warm * 100, 1),
                "peak_after_warmup_mb": round(max(after) / MB, 1),
            }
        # RSS along the run, at each tenth of the completed jobs.
        marks = []
        for tenth in range(1, 11):
            target = end["completed"] * tenth / 10
            hit = next(s for s in samples if s["completed"] >= target)
            marks.append(
                {"completed": hit["completed"], "t": hit["t"], "mb": hit["worker process"] / MB}
            )
        result["along"] = marks
        return result
    finally:
        (Path(tempfile.gettempdir()) / "scale-worker-samples.json").write_text(json.dumps(samples))
        product.stop()
        if not args.keep:
            drop_services(NAME)


def markdown(r: dict[str, Any]) -> str:
    w, m, t = r["worker process"], r["master"], r["total"]
    verdict = "met" if w["growth_percent"] <= 10 else "missed"
    lines = [
        SECTION,
        "",
        f"Command: `{r['command']}`. Measured {r['measured_at']} on the shared 2-core VM: api, one "
        "worker (`--processes 1 --threads 8`, as scripts/run.sh starts each worker) and the "
        "scheduler; no-op jobs submitted by POST /jobs/batch in chunks, keeping a backlog; "
        "RSS from /proc every second (each figure the median of the 10 s before that point).",
        "",
    ]
    if r["timed_out"]:
        lines += [
            f"**Not all {r['jobs_requested']:,} jobs ran within the time bound: the figures "
            f"cover the first {r['jobs_completed']:,}.**",
            "",
        ]
    lines += [
        f"{r['jobs_completed']:,} jobs completed in {r['seconds']:.0f} s "
        f"({r['rate_jobs_per_second']} jobs/s); warm-up = the first {r['warmup_jobs']:,} jobs "
        f"(reached at {r['warm_at_seconds']:.0f} s). Target: growth <= 10 % after warm-up: "
        f"**{verdict}**.",
        "",
        "| process | RSS after warm-up | RSS at the end | growth | peak after warm-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in (("worker process (runs the jobs)", w), ("dramatiq master", m), ("both", t)):
        lines.append(
            f"| {name} | {row['warm_mb']:.1f} MB | {row['end_mb']:.1f} MB | "
            f"**{row['growth_percent']:+.1f} %** | {row['peak_after_warmup_mb']:.1f} MB |"
        )
    lines += [
        "",
        "Worker process RSS along the run: "
        + ", ".join(f"{m['completed']:,} jobs {m['mb']:.1f} MB" for m in r["along"])
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--backlog", type=int, default=3_000, help="jobs kept not completed")
    parser.add_argument("--chunk", type=int, default=1_000, help="jobs per POST /jobs/batch")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for the run")
    parser.add_argument("--keep", action="store_true", help="keep database and vhost")
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()
    result = run(args)
    result["measured_at"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result["command"] = command_line()
    report(result, SECTION, markdown(result), args.results_file)


if __name__ == "__main__":
    main()
