"""/scheduler: stop and restart the starting of new jobs (running ones go on)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from fastapi import APIRouter

from api.deps import ADMIN, State
from api.errors import AUTH_RESPONSES
from api.schemas import SchedulerState
from queue_service.model import Admitted
from queue_service.rabbitmq.publishing import commit_then_publish
from queue_service.repository import pool as pool_repo
from queue_service.scheduling import admit_ready_jobs

router = APIRouter(
    prefix="/scheduler", tags=["scheduler"], responses=AUTH_RESPONSES, dependencies=[ADMIN]
)


@router.post("/pause", response_model=SchedulerState)
def pause(state: State) -> SchedulerState:
    with state.engine.begin() as conn:
        pool_repo.set_paused(conn, True)
    return SchedulerState(paused=True)


@router.post("/resume", response_model=SchedulerState)
def resume(state: State) -> SchedulerState:
    def work(conn: sa.Connection) -> list[Admitted]:
        pool_repo.set_paused(conn, False)
        return admit_ready_jobs(conn, state.settings, datetime.now(UTC))

    commit_then_publish(state.engine, state.broker, work)
    return SchedulerState(paused=False)
