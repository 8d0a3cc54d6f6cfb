"""/stats (JSON for people and the admin page) and /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.registry import Collector

from api.deps import AppState, State
from queue_service.model import JobStatus, Priority
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import pool as pool_repo
from queue_service.repository import stats as stats_repo

router = APIRouter(tags=["operations"])

THROUGHPUT_WINDOW = timedelta(seconds=60)
TIMING_WINDOW = timedelta(minutes=15)


def collect_stats(state: AppState) -> dict[str, Any]:
    now = datetime.now(UTC)
    with state.engine.connect() as conn:
        counts = jobs_repo.count_by_status(conn)
        depth = jobs_repo.ready_depth_by_priority(conn)
        pool = pool_repo.read_pool(conn)
        completed = stats_repo.completed_since(conn, now - THROUGHPUT_WINDOW)
        timings = stats_repo.recent_timings(conn, now, TIMING_WINDOW)
        dead = dead_letters_repo.count_open(conn)
    return {
        "jobs_by_status": {s.value: counts.get(s.value, 0) for s in JobStatus},
        "queue_depth_by_priority": {p.value: depth.get(p.value, 0) for p in Priority},
        "tokens": {
            "cpu_units": {
                "capacity": pool.cpu_capacity,
                "used": pool.cpu_used,
                "free": pool.cpu_free,
            },
            "memory_mb": {
                "capacity": pool.memory_capacity,
                "used": pool.memory_used,
                "free": pool.memory_free,
            },
        },
        "scheduler_paused": pool.paused,
        "throughput": {
            "completed_last_60s": completed,
            "per_second": round(completed / THROUGHPUT_WINDOW.total_seconds(), 3),
        },
        "timings_seconds": {
            "window_minutes": TIMING_WINDOW.total_seconds() / 60,
            "completed": timings.finished,
            "wait": {"p50": timings.wait_p50, "p95": timings.wait_p95, "p99": timings.wait_p99},
            "run": {"p50": timings.run_p50, "p95": timings.run_p95, "p99": timings.run_p99},
        },
        "dead_letters_open": dead,
    }


@router.get("/stats")
def stats(state: State) -> dict[str, Any]:
    """Counts by status, ready-queue depth by priority, tokens used and free, throughput,
    wait and run time percentiles."""
    return collect_stats(state)


class _StatsCollector(Collector):
    """Reads PostgreSQL at scrape time, so every API process reports the same truth."""

    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        data = collect_stats(self._state)
        jobs = GaugeMetricFamily("taskq_jobs", "Jobs by status", labels=["status"])
        for status, n in data["jobs_by_status"].items():
            jobs.add_metric([status], n)
        yield jobs
        ready = GaugeMetricFamily(
            "taskq_ready_jobs", "Ready jobs waiting for tokens, by priority", labels=["priority"]
        )
        for priority, n in data["queue_depth_by_priority"].items():
            ready.add_metric([priority], n)
        yield ready
        tokens = GaugeMetricFamily("taskq_tokens", "Resource tokens", labels=["resource", "state"])
        for resource, values in data["tokens"].items():
            for key in ("capacity", "used", "free"):
                tokens.add_metric([resource, key], values[key])
        yield tokens
        yield GaugeMetricFamily(
            "taskq_dead_letters_open", "Unresolved dead letters", value=data["dead_letters_open"]
        )
        yield GaugeMetricFamily(
            "taskq_completed_last_minute",
            "Jobs completed in the last 60 s",
            value=data["throughput"]["completed_last_60s"],
        )
        yield GaugeMetricFamily(
            "taskq_scheduler_paused",
            "1 when starting jobs is paused",
            value=int(data["scheduler_paused"]),
        )


@router.get("/metrics", response_class=Response)
def metrics(state: State) -> Response:
    """Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(state))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
