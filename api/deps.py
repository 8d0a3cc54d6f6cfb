"""Dependencies for the routes: settings, the database engine, the broker, the caller's key.

Every route but /healthz, /readyz, /metrics and the admin page's HTML needs a bearer key.
Routers declare the scope they need, e.g. `APIRouter(dependencies=[ADMIN])`; a route that
needs more than its router adds its own (`dependencies=[SUBMIT]`), and a route that wants
to know who called takes a parameter typed `ReadKey`, `SubmitKey` or `AdminKey`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from api.auth import ApiKey, KeyRing, Scope
from api.group_commit import SubmissionGroups
from api.stream import EventHub
from queue_service import errors
from queue_service.rabbitmq.broker import TaskQueueBroker
from queue_service.settings import Settings


@dataclass(frozen=True)
class AppState:
    settings: Settings
    engine: sa.Engine
    broker: TaskQueueBroker
    hub: EventHub
    submissions: SubmissionGroups


# The dependencies are `async def` though they never await: FastAPI runs a plain `def`
# dependency in a worker thread, a thread hop per dependency of every request.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.taskq
    return state


State = Annotated[AppState, Depends(get_state)]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="`Authorization: Bearer <key>`. Keys come from TASKQ_API_KEYS "
    "(`scope:secret`, scopes read < submit < admin); scripts/run.sh writes a generated "
    "admin key to .taskq/api-key.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def key_ring(connection: HTTPConnection) -> KeyRing:
    """The keys configured at start-up (create_app puts them on the app's state)."""
    ring: KeyRing = connection.app.state.api_keys
    return ring


def authorize(ring: KeyRing, token: str | None, needed: Scope) -> ApiKey:
    """The caller's key if it may do what needs `needed`; else Unauthorized or Forbidden."""
    key = ring.identify(token) if token else None
    if key is None:
        raise errors.Unauthorized(
            "a valid API key is required: send `Authorization: Bearer <key>`"
            if token is None
            else "the API key is not valid"
        )
    if not key.allows(needed):
        raise errors.Forbidden(
            f"this key has scope {key.scope.label!r}; the call needs {needed.label!r}",
            {"scope": key.scope.label, "needed": needed.label},
        )
    return key


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


async def read_key(request: Request, credentials: Credentials) -> ApiKey:
    return authorize(key_ring(request), _token(credentials), Scope.READ)


async def submit_key(request: Request, credentials: Credentials) -> ApiKey:
    return authorize(key_ring(request), _token(credentials), Scope.SUBMIT)


async def admin_key(request: Request, credentials: Credentials) -> ApiKey:
    return authorize(key_ring(request), _token(credentials), Scope.ADMIN)


ReadKey = Annotated[ApiKey, Depends(read_key)]
SubmitKey = Annotated[ApiKey, Depends(submit_key)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]

# The same, for `dependencies=[...]` of a router or a route decorator.
READ = Depends(read_key)
SUBMIT = Depends(submit_key)
ADMIN = Depends(admin_key)
