"""Prometheus metrics: every metric object of the product, and the calls that record them.

The rest of the code calls the small functions below (`jobs_submitted`, `job_started`,
`attempt_outcome`, ...) and never touches a metric object. Counters and histograms live
in the process that does the work (the api counts submissions, a worker counts attempts).
With `PROMETHEUS_MULTIPROC_DIR` set (scripts/run.sh sets it), prometheus_client writes
them to memory-mapped files in that directory, and the api's `/metrics` merges every
process of the machine (`registry_for_scrape`). Across machines each worker process can
also serve its own on `TASKQ_WORKER_METRICS_PORT` (see `serve_process_metrics`).

Gauges of shared state (the token pool, ready depth, live workers, maintenance age) are
not kept here: api/metrics_collector.py reads them from PostgreSQL at scrape time, from
rows whose number does not grow with the jobs table.
"""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY, Collector

# Seconds: from a few milliseconds (quick jobs in tests) to an hour (long reports).
_TIME_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600
)  # fmt: skip

_SUBMITTED = Counter("taskq_jobs_submitted", "Jobs accepted by POST /jobs and /jobs/batch")
_FINISHED = Counter(
    "taskq_jobs_finished",
    "Jobs that reached a terminal status after an attempt (completed, failed, cancelled)",
    ["type", "outcome"],
)
_RETRIES = Counter(
    "taskq_job_retries", "Failed attempts that will be retried after a backoff", ["type"]
)
_DEAD_LETTERS = Counter(
    "taskq_dead_letters", "Jobs that failed for good and were dead-lettered", ["type", "reason"]
)
_WAIT = Histogram(
    "taskq_job_wait_seconds",
    "Time from ready (pending) to started, per attempt",
    ["priority"],
    buckets=_TIME_BUCKETS,
)
_RUN = Histogram(
    "taskq_job_run_seconds",
    "Run time of an attempt, from start to its outcome",
    ["type"],
    buckets=_TIME_BUCKETS,
)
_STREAM_DROPPED = Counter(
    "taskq_stream_events_dropped",
    "Stream events not delivered to a WebSocket client that fell behind",
)

_TERMINAL = frozenset({"completed", "failed", "cancelled"})


def jobs_submitted(n: int = 1) -> None:
    """`n` new jobs were stored (a repeated submission is not new)."""
    if n > 0:
        _SUBMITTED.inc(n)


# A labelled series, looked up once per process and label values: `labels()` validates
# the values and takes the metric's lock on every call, once or twice per job in a worker.
@functools.cache
def _series(metric: Counter | Histogram, *values: str) -> Any:
    return metric.labels(*values)


def job_started(priority: str, wait_seconds: float | None) -> None:
    """A worker claimed an attempt that had been ready for `wait_seconds`."""
    if wait_seconds is not None:
        _series(_WAIT, priority).observe(max(wait_seconds, 0.0))


def job_finished(job_type: str, outcome: str, run_seconds: float | None = None) -> None:
    """The job reached a terminal status (`outcome`) at the end of an attempt."""
    _series(_FINISHED, job_type, outcome).inc()
    if run_seconds is not None:
        _series(_RUN, job_type).observe(max(run_seconds, 0.0))


def job_retried(job_type: str, run_seconds: float | None = None) -> None:
    """An attempt failed and the job will be retried after its backoff."""
    _series(_RETRIES, job_type).inc()
    if run_seconds is not None:
        _series(_RUN, job_type).observe(max(run_seconds, 0.0))


def job_dead_lettered(job_type: str, reason: str) -> None:
    _series(_DEAD_LETTERS, job_type, reason).inc()


def attempt_outcome(
    job_type: str, status: str, dead_letter_reason: str | None, run_seconds: float | None
) -> None:
    """The end of one attempt, whatever came of it: the one call a worker makes after the
    outcome committed. `status` is the job's new status."""
    if status == "retrying":
        job_retried(job_type, run_seconds)
        return
    if status in _TERMINAL:
        job_finished(job_type, status, run_seconds)
    if status == "failed":
        job_dead_lettered(job_type, dead_letter_reason or "failed")


def stream_event_dropped(n: int = 1) -> None:
    _STREAM_DROPPED.inc(n)


# --- exposition -------------------------------------------------------------------------


def clear_multiprocess_dir(path: str) -> None:
    """Empty the directory of a previous run (scripts/run.sh does the same before start)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def registry_for_scrape(multiproc_dir: str | None, *extra: Collector) -> CollectorRegistry:
    """The registry an api scrape renders: every process of this machine when
    `multiproc_dir` is set (plus this process's CPU, memory and file descriptors, which
    multiprocess mode does not carry), else this process's metrics; and `extra`."""
    registry = CollectorRegistry()
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
        ProcessCollector(registry=registry)
    else:
        registry.register(_DefaultRegistry())
    for collector in extra:
        registry.register(collector)
    return registry


class _DefaultRegistry(Collector):
    """This process's own metrics (default registry: ours, process and platform)."""

    def collect(self):  # type: ignore[no-untyped-def]
        yield from REGISTRY.collect()


class _OwnProcessFiles(Collector):
    """In multiprocess mode, only this process's files: what one worker serves itself."""

    def __init__(self, path: str, pid: int) -> None:
        self._path = path
        self._pid = pid

    def collect(self):  # type: ignore[no-untyped-def]
        files = glob.glob(os.path.join(self._path, f"*_{self._pid}.db"))
        return MultiProcessCollector.merge(files, accumulate=True)


def serve_process_metrics(
    host: str, port: int, processes: int, multiproc_dir: str | None
) -> int | None:
    """Serve this process's metrics over HTTP on the first free port of
    `port .. port + processes - 1` (one per worker process of a machine); the port used,
    or None when `port` is 0 (off) or every port of the range is taken."""
    if port <= 0:
        return None
    registry = CollectorRegistry()
    if multiproc_dir:
        registry.register(_OwnProcessFiles(multiproc_dir, os.getpid()))
        ProcessCollector(registry=registry)
    else:
        registry.register(_DefaultRegistry())
    for candidate in range(port, port + max(processes, 1)):
        try:
            start_http_server(candidate, addr=host, registry=registry)
        except OSError:
            continue
        return candidate
    return None


def process_exited(multiproc_dir: str | None, pid: int | None = None) -> None:
    """Bookkeeping when a process of this machine stops (its live gauges go away)."""
    if multiproc_dir:
        mark_process_dead(pid if pid is not None else os.getpid(), multiproc_dir)
