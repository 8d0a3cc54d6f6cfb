"""/stats (JSON for people) and /stats/overview (cheap figures for the console)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter

from api.deps import READ, AppState, State
from api.errors import AUTH_RESPONSES
from queue_service.admission import PoolState
from queue_service.model import Priority
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import pool as pool_repo
from queue_service.repository import stats as stats_repo
from queue_service.repository.overview import read_overview

router = APIRouter(tags=["operations"], responses=AUTH_RESPONSES, dependencies=[READ])

THROUGHPUT_WINDOW = timedelta(seconds=60)
TIMING_WINDOW = timedelta(minutes=15)


def collect_stats(state: AppState) -> dict[str, Any]:
    now = datetime.now(UTC)
    with state.engine.connect() as conn:
        by_status = stats_repo.count_by_status(conn)
        depth = jobs_repo.ready_depth_by_priority(conn)
        pool = pool_repo.read_pool(conn)
        completed = stats_repo.completed_since(conn, now - THROUGHPUT_WINDOW)
        timings = stats_repo.recent_timings(conn, now, TIMING_WINDOW)
        dead = dead_letters_repo.count_open(conn)
    return {
        "jobs_by_status": by_status.counts,
        # Finished jobs are counted within a time budget; past it (millions of rows) their
        # figures are the planner's estimates, named here.
        "jobs_by_status_estimated": by_status.estimated,
        "queue_depth_by_priority": {p.value: depth.get(p.value, 0) for p in Priority},
        "tokens": _tokens(pool),
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


def _tokens(pool: PoolState) -> dict[str, dict[str, int]]:
    """The pool's capacity, used and free tokens per unit, as both stats routes show them."""
    return {
        "cpu_units": {"capacity": pool.cpu_capacity, "used": pool.cpu_used, "free": pool.cpu_free},
        "memory_mb": {
            "capacity": pool.memory_capacity,
            "used": pool.memory_used,
            "free": pool.memory_free,
        },
    }


@router.get("/stats")
def stats(state: State) -> dict[str, Any]:
    """Counts by status, ready-queue depth by priority, tokens used and free, throughput,
    wait and run time percentiles. A finished status that cannot be counted within the
    time budget (millions of jobs) shows the database's estimate and is listed in
    `jobs_by_status_estimated`."""
    return collect_stats(state)


@router.get("/stats/overview")
def overview(state: State) -> dict[str, Any]:
    """What the console's dashboard refreshes: the token pool, ready jobs by priority, jobs
    not yet finished by status, open dead letters, live workers and their threads (total,
    and busy running a handler at their last heartbeat), the age of the last maintenance
    pass. Unlike /stats it never counts finished jobs, so its cost does not
    grow with history."""
    now = datetime.now(UTC)
    with state.engine.connect() as conn:
        view = read_overview(conn, now, state.settings.worker_heartbeat_seconds)
    pool = view.pool
    return {
        "tokens": _tokens(pool),
        "scheduler_paused": pool.paused,
        "queue_depth_by_priority": view.ready_by_priority,
        "active_jobs_by_status": view.active_by_status,
        "dead_letters_open": view.dead_letters_open,
        "workers_live": view.live_workers,
        "worker_threads": {"total": view.worker_threads, "busy": view.busy_threads},
        "maintenance_last_pass_age_seconds": view.maintenance_age_seconds,
    }
