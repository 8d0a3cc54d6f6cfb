"""Dependencies for the routes: settings, the database engine, the broker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request

from api.group_commit import SubmissionGroups
from api.stream import EventHub
from queue_service.broker import TaskQueueBroker
from queue_service.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings
    engine: sa.Engine
    broker: TaskQueueBroker
    hub: EventHub
    submissions: SubmissionGroups


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.taskq
    return state


State = Annotated[AppState, Depends(get_state)]
