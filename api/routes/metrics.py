"""GET /metrics: Prometheus text format, for this machine's processes and the shared state.

Counters and histograms come from queue_service.metrics (every api and worker process
of this machine in multiprocess mode). Gauges of the shared state are read from
PostgreSQL at scrape time by `_SharedStateCollector`, from rows bounded by live work
(queue_service.repository.overview): a scrape costs the same at 10 million jobs as at
10 thousand.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from api.deps import AppState, State
from queue_service import metrics
from queue_service.repository.overview import MB, read_overview

router = APIRouter(tags=["operations"])


class _SharedStateCollector(Collector):
    def __init__(self, state: AppState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings = self._state.settings
        with self._state.engine.connect() as conn:
            view = read_overview(conn, datetime.now(UTC), settings.worker_heartbeat_seconds)
        pool = view.pool
        cpu = GaugeMetricFamily("taskq_pool_cpu_units", "Token pool, CPU units", labels=["state"])
        memory = GaugeMetricFamily(
            "taskq_pool_memory_bytes", "Token pool, memory in bytes", labels=["state"]
        )
        for name, cpu_value, memory_value in (
            ("capacity", pool.cpu_capacity, pool.memory_capacity),
            ("used", pool.cpu_used, pool.memory_used),
            ("free", pool.cpu_free, pool.memory_free),
        ):
            cpu.add_metric([name], cpu_value)
            memory.add_metric([name], memory_value * MB)
        yield cpu
        yield memory
        ready = GaugeMetricFamily(
            "taskq_ready_jobs", "Ready jobs waiting for tokens, by priority", labels=["priority"]
        )
        for priority, n in view.ready_by_priority.items():
            ready.add_metric([priority], n)
        yield ready
        active = GaugeMetricFamily(
            "taskq_active_jobs", "Jobs not yet finished, by status", labels=["status"]
        )
        for status, n in view.active_by_status.items():
            active.add_metric([status], n)
        yield active
        yield GaugeMetricFamily(
            "taskq_workers_live",
            "Worker processes whose heartbeat is recent",
            value=view.live_workers,
        )
        threads = GaugeMetricFamily(
            "taskq_worker_threads",
            "Worker threads of the live workers; busy: running a job's handler at their "
            "process's last heartbeat",
            labels=["state"],
        )
        threads.add_metric(["total"], view.worker_threads)
        threads.add_metric(["busy"], view.busy_threads)
        yield threads
        if view.maintenance_age_seconds is not None:
            yield GaugeMetricFamily(
                "taskq_maintenance_last_pass_age_seconds",
                "Seconds since the last maintenance pass",
                value=view.maintenance_age_seconds,
            )
        yield GaugeMetricFamily(
            "taskq_dead_letters_open",
            "Dead letters not yet replayed or discarded",
            value=view.dead_letters_open,
        )
        yield GaugeMetricFamily(
            "taskq_scheduler_paused", "1 when starting jobs is paused", value=int(pool.paused)
        )


@router.get("/metrics", response_class=Response)
def metrics_endpoint(state: State) -> Response:
    """Prometheus text format: counters and histograms of every process of this machine,
    gauges of the shared state, and this process's CPU, memory and file descriptors."""
    registry = metrics.registry_for_scrape(
        state.settings.prometheus_multiproc_dir, _SharedStateCollector(state)
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
