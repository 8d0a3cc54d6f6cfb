"""Throughput of ours against plain Dramatiq and Celery, measured side by side in one run.

    .venv/bin/python bench/compare.py --results-file evaluation_results.md

Each repetition runs, for 1 process x 8 threads and 2 processes x 8 threads, in an order
that rotates between repetitions:
  (a) plain Dramatiq: a no-op actor on a queue declared with x-max-priority,
  (b) Celery: a no-op task, threads pool, late ack, priority queue,
  (c) ours through the public API: POST /jobs/batch (chunks of 10,000), then single POST /jobs
      from --clients concurrent clients while the workers run; the jobs are of a sync no-op
      type registered as a user registers one (bench/noop_ours.py), as the baselines' no-ops
      are plain sync functions (--job-type noop: the simulated async type instead),
each draining --jobs no-op jobs with random priorities (first submitted -> last finished),
then the POST /jobs rate with the api alone. Our processes start as scripts/run.sh starts
them, on their own database (taskq_compare) and vhost, with a token pool far larger than 16
threads can use. Every worker process of the three prefetches the same number of messages
(--prefetch; Celery's prefetch multiplier is that over its threads). Every phase stops at
its timeout with the partial rate.

Exit status: 1 if a check failed (a job of ours not completed exactly once, tokens in use
above capacity in any 50 ms sample or not 0 after a drain, rows not equal to 2xx answers);
2 if a phase did not drain in time or was skipped; 0 otherwise. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import compare_phases as phases  # noqa: E402
from bench import compare_services as services  # noqa: E402
from bench import noop_ours  # noqa: E402
from bench.compare_report import SECTION, machine_facts, render  # noqa: E402
from bench.results_file import write_section  # noqa: E402

SYSTEMS = ["dramatiq", "celery", "ours", "ours_single"]
# Start-up and shutdown of one phase's processes, on top of its timeout, at worst.
PHASE_OVERHEAD_SECONDS = 120
MIN_PHASE_SECONDS = 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs per drain")
    parser.add_argument("--single-jobs", type=int, help="jobs sent as single POSTs (jobs/4)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent single-POST clients")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--phase-timeout", type=float, default=300, help="seconds per phase")
    parser.add_argument("--time-limit", type=float, default=2700, help="seconds for the run")
    parser.add_argument("--rate-count", type=int, default=5000, help="POST /jobs at 32 conns")
    parser.add_argument("--latency-count", type=int, default=500, help="POST /jobs at conc. 1")
    parser.add_argument("--batch-rounds", type=int, default=2, help="10,000-job batches timed")
    parser.add_argument("--no-rate", action="store_true", help="skip the POST /jobs rate part")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="subset of " + ",".join(SYSTEMS) + " (empty: only the POST /jobs rate part)",
    )
    parser.add_argument(
        "--prefix",
        default=services.OURS_DB,
        help="name of the run's database and vhost (and the prefix of the others')",
    )
    parser.add_argument(
        "--shapes",
        default=",".join(str(p) for p in services.SHAPES),
        help="worker processes per run, comma-separated (8 threads each)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        help="messages each worker process prefetches, the same for the three systems "
        "(Celery: as its prefetch multiplier, this over the threads; default: four per thread, "
        "our product's default, TASKQ_WORKER_PREFETCH)",
    )
    parser.add_argument(
        "--claim-on-delivery",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="our workers claim each message as it is delivered (TASKQ_CLAIM_ON_DELIVERY, "
        "the default); --no-claim-on-delivery: when a thread takes it",
    )
    parser.add_argument(
        "--job-type",
        choices=[noop_ours.JOB_TYPE, "noop"],
        default=phases.JOB_TYPE,
        help="our no-op jobs: bench_noop, a sync handler of the benchmark's own (as the "
        "baselines' no-ops), or noop, the simulated type (async)",
    )
    parser.add_argument("--results-file", type=Path, help="write the markdown section here")
    args = parser.parse_args()
    phases.JOB_TYPE = args.job_type
    services.PREFETCH = args.prefetch
    services.CLAIM_ON_DELIVERY = args.claim_on_delivery
    try:
        services.SHAPES[:] = [int(p) for p in args.shapes.split(",") if p]
    except ValueError:
        parser.error(f"--shapes takes numbers of processes, not {args.shapes!r}")
    args.systems = [name for name in args.systems.split(",") if name]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {sorted(unknown)}")
    if args.single_jobs is None:
        args.single_jobs = max(1, args.jobs // 4)
    return args


def plan(args: argparse.Namespace) -> list[tuple[int, str, int]]:
    """(repetition, system, processes): every system and shape once per repetition, the
    order of the systems rotated so no system always runs first or last."""
    steps = []
    for rep in range(args.reps):
        systems = args.systems
        shift = rep % len(systems) if systems else 0
        order = systems[shift:] + systems[:shift]
        for processes in services.SHAPES:
            steps += [(rep, system, processes) for system in order]
        if not args.no_rate:
            steps.append((rep, "rate", 0))
    return steps


def run_step(
    step: tuple[int, str, int], timeout: float, args: argparse.Namespace, log_dir: Path, key: str
) -> dict[str, Any]:
    _rep, system, processes = step
    if system == "rate":
        return phases.run_rate(
            log_dir, key, args.rate_count, args.latency_count, args.batch_rounds, timeout
        )
    if system in ("dramatiq", "celery"):
        return phases.run_baseline(system, processes, args.jobs, timeout, log_dir)
    mode, jobs = ("batch", args.jobs) if system == "ours" else ("single", args.single_jobs)
    return phases.run_ours(mode, processes, jobs, timeout, log_dir, key, args.clients)


def describe(step: tuple[int, str, int], result: dict[str, Any]) -> str:
    rep, system, processes = step
    name = f"rep {rep + 1} {system}" + (f" {processes}x8" if processes else "")
    if "error" in result:
        return f"{name}: ERROR {result['error']}"
    if system == "rate":
        return (
            f"{name}: POST /jobs x32 {result['c32_per_second']:.0f}/s, "
            f"p50 c1 {result['c1_p50_ms'] or 0:.2f} ms, "
            f"batch {result['batch_jobs_per_second']:.0f} jobs/s"
        )
    text = f"{name}: {result['finished']}/{result['jobs']} in {result['drain_seconds']:.1f} s = "
    text += f"{result['jobs_per_second']:.0f} jobs/s"
    if not result["drained"]:
        text += f" (did not drain within {result['timeout_seconds']:.0f} s)"
    failures = result.get("checks", {}).get("failures") or result.get("failures") or []
    return text + "".join(f"\n    FAIL: {f}" for f in failures)


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so every phase stops the processes it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    services.use_prefix(args.prefix)
    steps = plan(args)
    worst = min(len(steps) * (args.phase_timeout + PHASE_OVERHEAD_SECONDS), args.time_limit)
    worst += PHASE_OVERHEAD_SECONDS
    print(
        f"{len(steps)} phases, at most {args.phase_timeout:.0f} s each, run capped at "
        f"{args.time_limit:.0f} s: worst case about {worst / 60:.0f} min",
        flush=True,
    )
    started_at = datetime.now(UTC)
    facts = machine_facts()
    deadline = time.monotonic() + args.time_limit
    key = secrets.token_urlsafe(24)
    log_dir = Path(tempfile.mkdtemp(prefix="taskq-compare-"))
    print(f"process logs under {log_dir}", flush=True)
    services.migrate_template()
    results: list[dict[str, Any]] = []
    try:
        for step in steps:
            remaining = deadline - time.monotonic()
            rep, system, processes = step
            record: dict[str, Any] = {"rep": rep, "system": system, "processes": processes}
            if remaining < MIN_PHASE_SECONDS:
                record["skipped"] = "run time limit reached"
                results.append(record)
                print(f"rep {rep + 1} {system}: skipped (time limit)", flush=True)
                continue
            timeout = min(args.phase_timeout, remaining)
            try:
                record.update(run_step(step, timeout, args, log_dir, key))
            except Exception as error:  # one broken phase must not lose the others
                record["error"] = f"{type(error).__name__}: {error}"
            results.append(record)
            print(describe(step, record), flush=True)
    finally:
        services.drop_databases()
    facts["load_average_end"] = os.getloadavg()
    report = {
        "started_at": started_at.isoformat(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": facts,
        "pool": {"cpu_units": services.POOL_CPU_UNITS, "memory_mb": services.POOL_MEMORY_MB},
        "results": results,
    }
    section, status = render(report, args)
    print("\n" + section)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    raw = out / f"compare-{started_at:%Y%m%dT%H%M%SZ}.json"
    raw.write_text(json.dumps(report, indent=2, default=str))
    print(f"raw results: {raw.relative_to(ROOT)}")
    if args.results_file:
        write_section(args.results_file, SECTION, section)
        print(f"section written to {args.results_file}")
    return status


if __name__ == "__main__":
    sys.exit(main())
