"""The measured phases of bench/compare.py. Each drains `jobs` no-op jobs with random
priorities, from the first submission to the last finish, and gives up after `timeout`
seconds with the partial rate ("did not drain within X s") instead of hanging."""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dramatiq
import httpx
import psycopg

from bench import compare_services as services
from bench import http_load, noop_ours, process_cpu
from bench.completion_counter import read_counts

PRIORITIES = ["critical", "high", "normal", "low"]
BATCH_LIMIT = 10_000
Result = dict[str, Any]


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds of the given sessions, PostgreSQL, RabbitMQ and this client, per job."""

    def __init__(self, sessions: dict[str, set[int]]) -> None:
        self.sessions = sessions
        self.servers = services.server_pids()
        self.before = process_cpu.snapshot(sessions, self.servers)
        self.client_before = _self_cpu()

    def per_job_ms(self, finished: int) -> dict[str, dict[str, float]]:
        spent = process_cpu.delta(self.before, process_cpu.snapshot(self.sessions, self.servers))
        spent["bench client"] = _self_cpu() - self.client_before
        per_job = {g: (s * 1000 / finished if finished else 0.0) for g, s in spent.items()}
        return {"cpu_seconds": spent, "cpu_ms_per_job": per_job}


def _outcome(jobs: int, finished: int, started: float, last: float, timeout: float) -> Result:
    drained = finished >= jobs
    elapsed = (last if drained else time.time()) - started
    return {
        "jobs": jobs,
        "finished": finished,
        "drained": drained,
        "timeout_seconds": timeout,
        "drain_seconds": elapsed,
        "jobs_per_second": finished / elapsed if elapsed > 0 else 0.0,
    }


def _wait(
    progress: Callable[[], tuple[int, float]], jobs: int, deadline: float, poll: float
) -> tuple[int, float]:
    """Poll (finished, last finish) until `jobs` finished or the deadline passed."""
    finished, last = progress()
    while finished < jobs and time.monotonic() < deadline:
        time.sleep(poll)
        finished, last = progress()
    return finished, last


# --- plain Dramatiq and Celery ---------------------------------------------------------


def run_baseline(system: str, processes: int, jobs: int, timeout: float, log_dir: Path) -> Result:
    rng = random.Random()
    priorities = [rng.randint(0, 9) for _ in range(jobs)]
    count_dir = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=log_dir))
    services.reset_vhost(services.VHOSTS[system])
    start = services.start_dramatiq if system == "dramatiq" else services.start_celery
    baseline = start(processes, count_dir, log_dir)
    try:
        meter = CpuMeter({"workers": {p.popen.pid for p in baseline.processes}})
        deadline = time.monotonic() + timeout
        started = time.time()
        publish = _publish_dramatiq if system == "dramatiq" else _publish_celery
        published = publish(priorities, deadline)
        submit_seconds = time.time() - started

        def progress() -> tuple[int, float]:
            count, _first, last = read_counts(count_dir)
            return count, last

        finished, last = _wait(progress, published, deadline, 0.05)
        result = _outcome(jobs, finished, started, last, timeout)
        result.update(meter.per_job_ms(finished), submit_seconds=submit_seconds)
        return result
    finally:
        baseline.stop()


def _publish_dramatiq(priorities: list[int], deadline: float) -> int:
    from bench.noop_dramatiq import ACTOR, QUEUE, build_broker

    broker = build_broker(f"{services.AMQP}/{services.VHOSTS['dramatiq']}")
    try:
        for count, priority in enumerate(priorities):
            if count % 1000 == 0 and time.monotonic() > deadline:
                return count
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=QUEUE,
                actor_name=ACTOR,
                args=(),
                kwargs={},
                options={"broker_priority": priority},
            )
            broker.enqueue(message)
        return len(priorities)
    finally:
        broker.close()


def _publish_celery(priorities: list[int], deadline: float) -> int:
    from bench.noop_celery import TASK, build_app

    app = build_app(f"{services.AMQP}/{services.VHOSTS['celery']}")
    with app.producer_or_acquire() as producer:
        for count, priority in enumerate(priorities):
            if count % 1000 == 0 and time.monotonic() > deadline:
                return count
            app.send_task(TASK, priority=priority, producer=producer)
    return len(priorities)


# --- ours --------------------------------------------------------------------------------


# The type of our no-op jobs (bench/compare.py --job-type): the benchmark's own sync
# handler (bench/noop_ours.py), as the baselines' no-ops are, or the simulated async `noop`.
JOB_TYPE = noop_ours.JOB_TYPE


def job_bodies(count: int, rng: random.Random) -> list[dict[str, Any]]:
    return [{"type": JOB_TYPE, "priority": rng.choice(PRIORITIES)} for _ in range(count)]


def _finished_count(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    row = conn.execute(
        "SELECT count(*), extract(epoch FROM max(finished_at)) FROM jobs "
        "WHERE status IN ('completed', 'failed', 'cancelled')"
    ).fetchone()
    assert row is not None
    return int(row[0]), float(row[1] or 0.0)


def _drain_progress(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    """(finished, last finish) once no job is left unfinished, (0, 0) before: while the
    workers run, each poll is one probe of ix_jobs_status_created, not a count of every
    finished row (five of those a second were a few per cent of the database's CPU in the
    figures, which the baselines' counting in files does not pay)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM jobs "
        "  WHERE status IN ('blocked', 'scheduled', 'pending', 'running', 'retrying'))"
    ).fetchone()
    assert row is not None
    return (0, 0.0) if row[0] else _finished_count(conn)


def run_ours(
    mode: str, processes: int, jobs: int, timeout: float, log_dir: Path, api_key: str, clients: int
) -> Result:
    """`mode` "batch": POST /jobs/batch in chunks of at most 10,000; "single": one POST /jobs
    per job from `clients` concurrent clients. The workers run all along."""
    rng = random.Random()
    bodies = job_bodies(jobs, rng)
    product = services.start_ours(api_key, log_dir, processes)
    sampler = services.PoolSampler()
    sampler.start()
    http = httpx.Client(
        base_url=product.base_url,
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=max(timeout, 1),
        limits=httpx.Limits(max_connections=max(clients, 1)),
    )
    try:
        groups = {"api": "api", "workers": "worker", "scheduler": "scheduler"}
        meter = CpuMeter(
            {
                group: {p.popen.pid for p in product.processes if p.name.startswith(prefix)}
                for group, prefix in groups.items()
            }
        )
        deadline = time.monotonic() + timeout
        started = time.time()
        if mode == "batch":
            accepted, latencies = _submit_batches(http, bodies, deadline), list[float]()
        else:
            accepted, latencies = _submit_singles(http, bodies, clients, deadline)
        submit_seconds = time.time() - started
        with psycopg.connect(f"{services.PG}/{services.OURS_DB}", autocommit=True) as conn:
            _wait(lambda: _drain_progress(conn), accepted, deadline, 0.2)
            finished, last = _finished_count(conn)  # also when the deadline came first
            result = _outcome(jobs, finished, started, last, timeout)
            result.update(meter.per_job_ms(finished))
            result["submit_seconds"] = submit_seconds
            result["accepted"] = accepted
            result["submit_per_second"] = accepted / submit_seconds if submit_seconds else 0.0
            if latencies:
                result["submit_p50_ms"] = statistics.median(latencies) * 1000
            result["checks"] = check_ours(conn, accepted, drained=result["drained"])
        result["pool"] = sampler.stop()
        if result["pool"]["violation_count"]:
            result["checks"]["failures"].append(
                f"tokens in use above capacity in {result['pool']['violation_count']} samples"
            )
        return result
    finally:
        sampler.stop()
        http.close()
        product.stop()


def _submit_batches(http: httpx.Client, bodies: list[dict[str, Any]], deadline: float) -> int:
    accepted = 0
    for start in range(0, len(bodies), BATCH_LIMIT):
        if time.monotonic() > deadline:
            break
        response = http.post("/jobs/batch", json={"jobs": bodies[start : start + BATCH_LIMIT]})
        response.raise_for_status()
        accepted += len(response.json()["items"])
    return accepted


def _submit_singles(
    http: httpx.Client, bodies: list[dict[str, Any]], clients: int, deadline: float
) -> tuple[int, list[float]]:
    """One POST /jobs per body from `clients` threads; a non-2xx answer raises."""

    def one(body: dict[str, Any]) -> float | None:
        if time.monotonic() > deadline:
            return None
        sent = time.perf_counter()
        http.post("/jobs", json=body).raise_for_status()
        return time.perf_counter() - sent

    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for t in pool.map(one, bodies) if t is not None]
    return len(latencies), latencies


def check_ours(conn: psycopg.Connection[Any], accepted: int, drained: bool) -> Result:
    """Every job completed exactly once (one job_running event each), the rows equal the
    accepted submissions, and no token left in use once drained."""
    row = conn.execute(
        "SELECT count(*),"
        " count(*) FILTER (WHERE runs > 1),"
        " count(*) FILTER (WHERE status = 'completed' AND runs <> 1),"
        " count(*) FILTER (WHERE status IN ('failed', 'cancelled')),"
        " count(*) FILTER (WHERE status <> 'completed')"
        " FROM (SELECT j.status, (SELECT count(*) FROM job_events e"
        "  WHERE e.job_id = j.id AND e.event = 'job_running') AS runs FROM jobs j) AS s"
    ).fetchone()
    assert row is not None
    rows, twice, completed_not_once, failed, unfinished = (int(v) for v in row)
    failures = []
    if rows != accepted:
        failures.append(f"{rows} rows in jobs but {accepted} submissions accepted")
    if twice:
        failures.append(f"{twice} jobs ran more than once (job_running events > 1)")
    if completed_not_once:
        failures.append(f"{completed_not_once} completed jobs without exactly one job_running")
    if failed:
        failures.append(f"{failed} no-op jobs failed or were cancelled")
    tokens = None
    if drained:
        if unfinished:
            failures.append(f"{unfinished} jobs not completed")
        tokens = _tokens_after_drain(conn)
        if tokens != (0, 0):
            failures.append(f"tokens still in use after the drain: cpu {tokens[0]}, mb {tokens[1]}")
    return {
        "rows": rows,
        "ran_twice": twice,
        "completed_not_once": completed_not_once,
        "failed_or_cancelled": failed,
        "unfinished": unfinished,
        "tokens_in_use_at_end": tokens,
        "failures": failures,
    }


def _tokens_after_drain(conn: psycopg.Connection[Any], wait: float = 5.0) -> tuple[int, int]:
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute("SELECT cpu_used, memory_used FROM resource_pool").fetchone()
        assert row is not None
        if (row[0], row[1]) == (0, 0) or time.monotonic() > deadline:
            return int(row[0]), int(row[1])
        time.sleep(0.1)


# --- POST /jobs rate (api alone, no workers) --------------------------------------------


def run_rate(
    log_dir: Path,
    api_key: str,
    count: int,
    latency_count: int,
    batch_rounds: int,
    timeout: float,
    api_processes: int = 2,
) -> Result:
    """POST /jobs at 32 connections spread over `api_processes` api processes (committed
    rows must equal 2xx answers), p50 latency at concurrency 1, and POST /jobs/batch
    jobs/s; the api runs without workers."""
    rng = random.Random()
    product = services.start_ours(api_key, log_dir, processes=0, workers=False)
    urls = services.start_more_api(product, api_processes - 1)
    headers = {"Authorization": f"Bearer {api_key}"}
    deadline = time.monotonic() + timeout
    try:
        meter = CpuMeter({"api": {p.popen.pid for p in product.processes}})
        with httpx.Client(base_url=product.base_url, headers=headers, timeout=60) as http:
            for body in job_bodies(50, rng):  # warm-up
                http.post("/jobs", json=body)
            # One connection, one request at a time; the lean client (bench/http_load.py)
            # so that the client's own cost does not count as the api's latency or cap
            # its rate.
            single, _ = asyncio.run(
                http_load.post_all(
                    urls[:1], headers, "/jobs", job_bodies(latency_count, rng), 1, deadline
                )
            )
            if single.errors:
                raise RuntimeError(f"POST /jobs at concurrency 1: {single.errors} failed")
            latencies = single.latencies
            rows_before = _rows()
            tally, seconds = asyncio.run(
                http_load.post_all(urls, headers, "/jobs", job_bodies(count, rng), 32, deadline)
            )
            ok, errors = tally.ok, tally.errors
            rows_added = _rows() - rows_before
            batch_jobs, batch_seconds = 0, 0.0
            for _ in range(batch_rounds):
                if time.monotonic() > deadline:
                    break
                bodies = job_bodies(BATCH_LIMIT, rng)
                sent = time.perf_counter()
                http.post("/jobs/batch", json={"jobs": bodies}).raise_for_status()
                batch_seconds += time.perf_counter() - sent
                batch_jobs += len(bodies)
        ordered = sorted(latencies)
        result: Result = {
            "c1_requests": len(latencies),
            "c1_p50_ms": statistics.median(ordered) * 1000 if ordered else None,
            "c1_p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000 if ordered else None,
            "api_processes": len(urls),
            "c32_requests": count,
            "c32_2xx": ok,
            "c32_errors": errors,
            "c32_seconds": seconds,
            "c32_per_second": ok / seconds if seconds else 0.0,
            "c32_rows_added": rows_added,
            "batch_jobs": batch_jobs,
            "batch_jobs_per_second": batch_jobs / batch_seconds if batch_seconds else 0.0,
            "failures": [],
        }
        if rows_added != ok:
            result["failures"].append(f"POST /jobs x32: {rows_added} rows committed, {ok} 2xx")
        result.update(meter.per_job_ms(ok + batch_jobs + len(latencies)))
        return result
    finally:
        product.stop()


def _rows() -> int:
    with psycopg.connect(f"{services.PG}/{services.OURS_DB}") as conn:
        row = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return int(row[0]) if row else 0
