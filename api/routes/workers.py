"""GET /workers: the live worker processes, from their heartbeat rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from api.deps import READ, State
from api.errors import AUTH_RESPONSES
from queue_service.repository import workers as workers_repo
from queue_service.repository.overview import worker_stale_after

router = APIRouter(
    prefix="/workers", tags=["operations"], responses=AUTH_RESPONSES, dependencies=[READ]
)


@router.get("")
def workers(state: State) -> dict[str, Any]:
    """Live worker processes: name, role, host, pid, start, last heartbeat, the attempts
    each is running (claimed on delivery, some may wait for a thread), its threads and how
    many ran a job's handler at its last heartbeat (null for the scheduler), and the port of
    its own /metrics (null when off)."""
    now = datetime.now(UTC)
    stale_after = worker_stale_after(state.settings.worker_heartbeat_seconds)
    with state.engine.connect() as conn:
        rows = workers_repo.live_workers(conn, now, stale_after)
    return {
        "items": [
            {
                "name": r.name,
                "role": r.role,
                "host": r.host,
                "pid": r.pid,
                "started_at": r.started_at,
                "heartbeat_at": r.heartbeat_at,
                "running_attempts": int(r.running),
                "threads": r.threads,
                "busy_threads": r.busy_threads,
                "metrics_port": r.metrics_port,
            }
            for r in rows
        ]
    }
