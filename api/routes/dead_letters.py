"""/dead-letters: what died, why, and what to do about it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.deps import ADMIN, READ, State
from api.errors import ERROR_RESPONSES
from api.schemas import DeadLetterPublic, DeadLettersPublic
from queue_service import errors
from queue_service.lifecycle import replay_dead_letter
from queue_service.rabbitmq.publishing import commit_then_publish
from queue_service.repository import dead_letters as dead_letters_repo

DeadLetterId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a dead letter's id")]

router = APIRouter(
    prefix="/dead-letters", tags=["dead letters"], responses=ERROR_RESPONSES, dependencies=[READ]
)


def _public(row: Any) -> DeadLetterPublic:
    return DeadLetterPublic(
        id=row.id,
        job_id=row.job_id,
        type=row.type,
        reason=row.reason,
        attempts=row.attempts,
        last_error=row.last_error,
        died_at=row.died_at,
        original_message=row.message,
        resolved_at=row.resolved_at,
        resolution=row.resolution,
    )


@router.get("", response_model=DeadLettersPublic)
def list_dead_letters(
    state: State,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        int | None, Query(ge=0, le=2**63 - 1, description="next_cursor of the previous page")
    ] = None,
) -> DeadLettersPublic:
    """Open dead letters, newest first. Each mirrors a message in the `taskq.dead-letters`
    queue of the `taskq.dead-letter` exchange, with the reason and the final error."""
    with state.engine.connect() as conn:
        rows = dead_letters_repo.list_open(conn, after_id=cursor, limit=limit + 1)
    page = rows[:limit]
    return DeadLettersPublic(
        items=[_public(r) for r in page],
        next_cursor=str(page[-1].id) if len(rows) > limit and page else None,
    )


def _get(state: State, dead_letter_id: int) -> Any:
    with state.engine.connect() as conn:
        row = dead_letters_repo.get(conn, dead_letter_id)
    if row is None:
        raise errors.DeadLetterNotFound(f"dead letter {dead_letter_id} not found")
    return row


@router.get("/{dead_letter_id}", response_model=DeadLetterPublic)
def get_dead_letter(dead_letter_id: DeadLetterId, state: State) -> DeadLetterPublic:
    return _public(_get(state, dead_letter_id))


@router.post("/{dead_letter_id}/replay", response_model=DeadLetterPublic, dependencies=[ADMIN])
def replay(dead_letter_id: DeadLetterId, state: State) -> DeadLetterPublic:
    """Run the job again with a fresh attempt budget; its dependents cancelled because it
    failed (`upstream_failed:<id>`) go back to `blocked`."""

    commit_then_publish(
        state.engine,
        state.broker,
        lambda conn: replay_dead_letter(conn, state.settings, dead_letter_id, datetime.now(UTC)),
    )
    return _public(_get(state, dead_letter_id))


@router.delete("/{dead_letter_id}", status_code=204, dependencies=[ADMIN])
def discard(dead_letter_id: DeadLetterId, state: State) -> Response:
    """Discard a dead letter: it leaves the list; the job stays failed."""
    with state.engine.begin() as conn:
        if dead_letters_repo.resolve(conn, dead_letter_id, "discarded", datetime.now(UTC)) is None:
            if dead_letters_repo.get(conn, dead_letter_id) is None:
                raise errors.DeadLetterNotFound(f"dead letter {dead_letter_id} not found")
            raise errors.NotReplayable(f"dead letter {dead_letter_id} is already resolved")
    return Response(status_code=204)
