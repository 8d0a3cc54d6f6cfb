"""The markdown section and machine facts of bench/compare.py."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import compare_services as services
from bench import noop_ours

SECTION = "## Throughput: ours vs plain Dramatiq and Celery"
NAMES = {
    "dramatiq": "plain Dramatiq",
    "celery": "Celery (threads pool, late ack)",
    "ours": "ours, POST /jobs/batch",
    "ours_single": "ours, single POST /jobs",
}
CPU_GROUPS = ["api", "workers", "scheduler", "postgresql", "rabbitmq", "bench client"]
PACKAGES = ["dramatiq", "celery", "kombu", "fastapi", "uvicorn", "sqlalchemy", "psycopg", "httpx"]


def machine_facts() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in cpuinfo.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=services.ROOT, capture_output=True, text=True
    ).stdout.strip()
    versions = {name: _version(name) for name in PACKAGES}
    versions.update(services.rabbitmq_versions())
    versions["postgresql"] = services.postgres_version()
    versions["python"] = platform.python_version()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "kernel": platform.release(),
        "load_average_start": os.getloadavg(),
        "versions": versions,
        "commit": commit,
    }


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _runs(report: dict[str, Any], system: str, processes: int) -> list[dict[str, Any]]:
    return [
        r
        for r in report["results"]
        if r["system"] == system and r["processes"] == processes and "jobs_per_second" in r
    ]


def _paired_ratios(report: dict[str, Any], base: str, processes: int) -> list[float]:
    """ours / `base` within each repetition that has both drains."""
    rates = {
        (r["system"], r["rep"]): r["jobs_per_second"]
        for system in ("ours", base)
        for r in _runs(report, system, processes)
    }
    reps = sorted({rep for (_, rep) in rates})
    return [
        rates[("ours", rep)] / rates[(base, rep)]
        for rep in reps
        if rates.get(("ours", rep)) and rates.get((base, rep))
    ]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _rate_cell(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "-"
    rates = [r["jobs_per_second"] for r in runs]
    cell = f"{statistics.median(rates):,.0f}"
    if len(rates) > 1:
        cell += f" ({min(rates):,.0f}-{max(rates):,.0f})"
    if not all(r["drained"] for r in runs):
        cell += " †"
    return cell


def render(report: dict[str, Any], args: argparse.Namespace) -> tuple[str, int]:
    """The section's markdown, and the exit status (1 a check failed, 2 incomplete)."""
    machine, v = report["machine"], report["machine"]["versions"]
    lines = [
        SECTION,
        "",
        "Command: `.venv/bin/python bench/compare.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Run {report['started_at'][:19]}Z at commit {machine['commit']} on {machine['nproc']} "
        f"CPUs ({machine['cpu']}), load average at start "
        f"{' / '.join(f'{x:.2f}' for x in machine['load_average_start'])}, at end "
        f"{' / '.join(f'{x:.2f}' for x in machine['load_average_end'])}. PostgreSQL "
        f"{v['postgresql']}, RabbitMQ {v['rabbitmq']} (Erlang {v['erlang']}), Python "
        f"{v['python']}, " + ", ".join(f"{p} {v[p]}" for p in services_packages(v)) + ".",
        "",
        f"Each cell drains {args.jobs:,} no-op jobs with random priorities "
        f"({args.single_jobs:,} for single POSTs from {args.clients} clients), first submitted "
        "-> last finished, workers already running; median of "
        f"{args.reps} repetitions (min-max), alternated in one run. Token pool "
        f"{services.POOL_CPU_UNITS:,} CPU units / {services.POOL_MEMORY_MB:,} MB, so that it is "
        "not the cap: the 16 threads run at most 16 jobs (1 unit / 128 MB each) while up to "
        f"{services.POOL_CPU_UNITS:,} are admitted ({_pool_peak(report)}). Prefetch "
        f"{services.prefetch()} per worker process for all three (Celery: prefetch "
        f"multiplier {services.celery_prefetch_multiplier()}); ours"
        + (
            " claims each message as it is delivered"
            if services.CLAIM_ON_DELIVERY
            else " claims each message when a thread takes it"
        )
        + ". Our jobs are of type "
        + (
            "`bench_noop`, a sync no-op handler of the benchmark's own (bench/noop_ours.py), "
            "as the baselines' no-ops are plain sync functions. "
            if args.job_type == noop_ours.JOB_TYPE
            else "`noop`, the simulated async type. "
        )
        + "† = at least one "
        "repetition did not drain within its timeout (partial rate).",
        "",
        "| jobs/s | " + " | ".join(f"{p} x 8" for p in services.SHAPES) + " |",
        "|---" * (len(services.SHAPES) + 1) + "|",
    ]
    for system, name in NAMES.items():
        cells = [_rate_cell(_runs(report, system, p)) for p in services.SHAPES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ratios (medians of the same run; in brackets the ratio within each repetition, whose "
        "phases run back to back, so a machine that drifts in speed moves both sides):",
        "",
    ]
    for p in services.SHAPES:
        ours = _median([r["jobs_per_second"] for r in _runs(report, "ours", p)])
        parts = []
        for base in ("dramatiq", "celery"):
            other = _median([r["jobs_per_second"] for r in _runs(report, base, p)])
            ratio = f"{ours / other:.2f}" if ours and other else "-"
            paired = _paired_ratios(report, base, p)
            if len(paired) > 1:
                ratio += (
                    f" (per repetition: median {statistics.median(paired):.2f}, "
                    f"{min(paired):.2f}-{max(paired):.2f})"
                )
            parts.append(f"ours / {NAMES[base].split(' (')[0]} = {ratio}")
        lines.append(f"- {p} x 8: " + ", ".join(parts))
    lines += _cpu_table(report) + _submission_lines(report) + _rate_lines(report)
    failures, incomplete = _problems(report)
    lines += [
        "",
        "Checks (ours: every job completed exactly once, tokens sampled every 50 ms):",
        "",
    ]
    lines += [f"- FAIL: {f}" for f in failures] or ["- all passed"]
    lines += [f"- incomplete: {i}" for i in incomplete]
    status = 1 if failures else 2 if incomplete else 0
    return "\n".join(lines) + "\n", status


def _pool_peak(report: dict[str, Any]) -> str:
    pools = [r["pool"] for r in report["results"] if r.get("pool")]
    if not pools:
        return "not sampled"
    cpu = max(p["max_cpu_used"] for p in pools)
    memory = max(p["max_memory_used"] for p in pools)
    samples = sum(p["samples"] for p in pools)
    return f"most in use in {samples:,} samples: {cpu:,} units, {memory:,} MB"


def services_packages(versions: dict[str, str]) -> list[str]:
    return [p for p in PACKAGES if p in versions]


def _cpu_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "CPU milliseconds per job (median; PostgreSQL = postmaster and all its backends, "
        "RabbitMQ = the node's beam.smp: whole servers, shared with other users of this "
        "machine):",
        "",
        "| run | " + " | ".join(CPU_GROUPS) + " |",
        "|---" * (len(CPU_GROUPS) + 1) + "|",
    ]
    for system, name in NAMES.items():
        for p in services.SHAPES:
            runs = _runs(report, system, p)
            if not runs:
                continue
            cells = []
            for group in CPU_GROUPS:
                values = [r["cpu_ms_per_job"][group] for r in runs if group in r["cpu_ms_per_job"]]
                cells.append(f"{statistics.median(values):.2f}" if values else "-")
            lines.append(f"| {name} {p} x 8 | " + " | ".join(cells) + " |")
    return lines


def _submission_lines(report: dict[str, Any]) -> list[str]:
    lines = ["", "Submission while the workers run (ours):", ""]
    for system in ("ours", "ours_single"):
        for p in services.SHAPES:
            runs = _runs(report, system, p)
            rates = [r["submit_per_second"] for r in runs]
            if rates:
                text = (
                    f"- {NAMES[system]}, {p} x 8: {statistics.median(rates):,.0f} jobs/s accepted"
                )
                p50 = [r["submit_p50_ms"] for r in runs if "submit_p50_ms" in r]
                if p50:
                    text += f", p50 {statistics.median(p50):.1f} ms"
                lines.append(text)
    return lines


def _rate_lines(report: dict[str, Any]) -> list[str]:
    runs = [r for r in report["results"] if r["system"] == "rate" and "c32_per_second" in r]
    if not runs:
        return []

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs if r[key] is not None)

    return [
        "",
        f"POST /jobs rate, api alone ({runs[0].get('api_processes', 1)} uvicorn processes, "
        f"32 connections spread over them; no workers), median of {len(runs)}:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| POST /jobs at 32 connections | {med('c32_per_second'):,.0f} /s "
        f"({runs[0]['c32_requests']:,} requests; committed rows = 2xx answers checked) |",
        f"| POST /jobs at concurrency 1, p50 / p99 | {med('c1_p50_ms'):.2f} / "
        f"{med('c1_p99_ms'):.2f} ms |",
        f"| POST /jobs/batch (10,000 jobs a request) | "
        f"{med('batch_jobs_per_second'):,.0f} jobs/s |",
    ]


def _problems(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    failures, incomplete = [], []
    for r in report["results"]:
        name = f"rep {r['rep'] + 1} {r['system']}" + (
            f" {r['processes']}x8" if r["processes"] else ""
        )
        if "error" in r:
            failures.append(f"{name}: {r['error']}")
        if "skipped" in r:
            incomplete.append(f"{name}: skipped ({r['skipped']})")
        if r.get("drained") is False:
            incomplete.append(
                f"{name}: did not drain within {r['timeout_seconds']:.0f} s "
                f"({r['finished']:,}/{r['jobs']:,}, {r['jobs_per_second']:,.0f} jobs/s)"
            )
        for failure in r.get("checks", {}).get("failures", []) + r.get("failures", []):
            failures.append(f"{name}: {failure}")
    return failures, incomplete
