"""WS /jobs/stream: live job events as JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.status import WS_1008_POLICY_VIOLATION

from api.auth import ApiKey, Scope, bearer_token
from api.deps import AppState, authorize, key_ring
from api.stream import StreamFilter, Subscription
from queue_service import errors
from queue_service.logging import get_logger

router = APIRouter(tags=["jobs"])
log = get_logger(__name__)

# How long a client without an Authorization header has to send `{"token": "..."}`.
AUTH_TIMEOUT_SECONDS = 10.0


@router.websocket("/jobs/stream")
async def job_stream(
    websocket: WebSocket,
    job_id: list[str] | None = Query(default=None),  # noqa: B008
    type: str | None = None,
    status: str | None = None,
) -> None:
    """Sends `{event, job_id, status, previous_status, attempt, at, type}` for every status
    change that commits, from any process. Filters: `job_id` (repeatable), `type`, `status`.
    Needs a `read` key: the `Authorization: Bearer` header, or `{"token": "<key>"}` as the
    first message (browsers cannot set headers on a WebSocket)."""
    state: AppState = websocket.app.state.taskq
    await websocket.accept()
    if await _authenticate(websocket) is None:
        return
    subscription = await state.hub.subscribe(
        StreamFilter(job_ids=frozenset(job_id or ()), type=type, status=status)
    )
    tasks: set[asyncio.Task[None]] = set()
    try:
        await websocket.send_json(
            {"event": "subscribed", "listening": state.hub.listening.is_set()}
        )
        # Read while sending: only a read sees the client leave. Without it a quiet
        # subscription would outlive its client and hold up the api's shutdown.
        tasks = {
            asyncio.create_task(_forward(subscription, websocket)),
            asyncio.create_task(_until_disconnect(websocket)),
        }
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        state.hub.unsubscribe(subscription)
        for task in tasks:
            task.cancel()
        # Whichever task ended first may have ended with the client's disconnect.
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _forward(subscription: Subscription, websocket: WebSocket) -> None:
    while True:
        await websocket.send_json(await subscription.queue.get())


async def _until_disconnect(websocket: WebSocket) -> None:
    """Return when the client leaves; messages it sends are ignored."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _authenticate(websocket: WebSocket) -> ApiKey | None:
    """The client's key, from the header or its first message; else tell it why, close
    with 1008 (policy violation) and return None. Nothing is streamed before this."""
    header = websocket.headers.get("authorization")
    token = bearer_token(header)
    if header is None:
        token = await _first_message_token(websocket)
    try:
        return authorize(key_ring(websocket), token, Scope.READ)
    except (errors.Unauthorized, errors.Forbidden) as error:
        log.info("stream_refused", code=error.code)
        with contextlib.suppress(Exception):
            await websocket.send_json(
                {"event": "error", "error": {"code": error.code, "message": error.message}}
            )
            await websocket.close(code=WS_1008_POLICY_VIOLATION, reason=error.code)
        return None


async def _first_message_token(websocket: WebSocket) -> str | None:
    try:
        message = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_SECONDS)
    except TimeoutError:
        return None
    text = message.get("text")
    if message["type"] != "websocket.receive" or not isinstance(text, str) or len(text) > 4096:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) and token else None
