"""WS /jobs/stream: live job events as JSON."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from api.deps import AppState
from api.stream import StreamFilter

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
    try:
        await websocket.send_json(
            {"event": "subscribed", "listening": state.hub.listening.is_set()}
        )
        while True:
            event = await subscription.queue.get()
            await websocket.send_json(event)
    except WebSocketDisconnect:
        pass
    finally:
        state.hub.unsubscribe(subscription)
        with contextlib.suppress(Exception):
            await websocket.close()
