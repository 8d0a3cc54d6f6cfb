"""The operator's overview (an aggregate read): figures whose cost does not grow with jobs.

Read by `/metrics` (every scrape), `GET /stats/overview` and the console's dashboard
(every refresh). Each figure comes from a row or an index range bounded by live work:
the single resource_pool row; ready jobs (the partial index of unadmitted pending jobs);
jobs not yet finished (by status, on ix_jobs_status_created); open dead letters (their
partial index); one heartbeat row per worker process; the maintenance_state row.
Finished jobs, which grow with history, are never counted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from queue_service.admission import PoolState
from queue_service.model import JobStatus, Priority
from queue_service.repository import dead_letters as dead_letters_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import pool as pool_repo
from queue_service.repository import stats as stats_repo
from queue_service.repository import workers as workers_repo

ACTIVE_STATUSES = (
    JobStatus.BLOCKED,
    JobStatus.SCHEDULED,
    JobStatus.PENDING,
    JobStatus.RUNNING,
    JobStatus.RETRYING,
)
MB = 1024 * 1024


@dataclass(frozen=True)
class Overview:
    pool: PoolState
    ready_by_priority: dict[str, int]
    active_by_status: dict[str, int]
    dead_letters_open: int
    live_workers: int
    # The live workers' threads, and how many ran a job's handler at their last heartbeat:
    # `running` also counts attempts claimed on delivery that wait for a thread.
    worker_threads: int
    busy_threads: int
    maintenance_age_seconds: float | None


def worker_stale_after(heartbeat_seconds: float) -> timedelta:
    """A worker is live while its last heartbeat is younger than three periods."""
    return timedelta(seconds=3 * heartbeat_seconds)


def read_overview(conn: sa.Connection, now: datetime, heartbeat_seconds: float) -> Overview:
    ready = jobs_repo.ready_depth_by_priority(conn)
    active = stats_repo.count_unfinished(conn)
    last_pass = workers_repo.last_maintenance_pass(conn)
    workers = workers_repo.live_totals(conn, now, worker_stale_after(heartbeat_seconds))
    return Overview(
        pool=pool_repo.read_pool(conn),
        ready_by_priority={p.value: int(ready.get(p.value, 0)) for p in Priority},
        active_by_status={s.value: int(active.get(s.value, 0)) for s in ACTIVE_STATUSES},
        dead_letters_open=dead_letters_repo.count_open(conn),
        live_workers=workers.processes,
        worker_threads=workers.threads,
        busy_threads=workers.busy_threads,
        maintenance_age_seconds=None
        if last_pass is None
        else max((now - last_pass).total_seconds(), 0.0),
    )
