"""WS /jobs/stream: live job events as JSON."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from api.deps import AppState
from api.stream import StreamFilter, Subscription

router = APIRouter(tags=["jobs"])


@router.websocket("/jobs/stream")
async def job_stream(
    websocket: WebSocket,
    job_id: list[str] | None = Query(default=None),  # noqa: B008
    type: str | None = None,
    status: str | None = None,
) -> None:
    """Sends `{event, job_id, status, previous_status, attempt, at, type}` for every status
    change that commits, from any process. Filters: `job_id` (repeatable), `type`, `status`."""
    state: AppState = websocket.app.state.taskq
    await websocket.accept()
    subscription = state.hub.subscribe(
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
