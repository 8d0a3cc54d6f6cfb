"""A job message whose claim cannot be checked is skipped, never run unchecked.

Dramatiq swallows (logs) any exception other than a MiddlewareError raised before a
message runs, and then runs the actor: so a database error must become SkipMessage.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import SkipMessage

from actors.middleware import attempt_claim
from actors.middleware.attempt_claim import AttemptClaim
from queue_service import names


class _UnreachableWriter:
    """An attempt writer whose every transaction fails, like PostgreSQL being down."""

    def claim(self, job_id: str, attempt: int, redelivered: bool) -> Any:
        raise ConnectionError("PostgreSQL is unreachable")


class _Runtime:
    writer = _UnreachableWriter()
    worker_name = "taskq-worker test"


def _message(actor_name: str, queue_name: str, args: tuple[Any, ...]) -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=args, kwargs={}, options={}
    )


def test_database_error_before_a_job_skips_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PostgreSQL cannot be reached
    monkeypatch.setattr(attempt_claim, "get_runtime", lambda: _Runtime())

    # When a job message is about to run, Then it is skipped (not run, not swallowed)
    with pytest.raises(SkipMessage):
        AttemptClaim().before_process_message(
            None,  # type: ignore[arg-type]
            _message(names.RUN_JOB_ACTOR, names.JOBS_QUEUE, ("job_x", 1)),  # type: ignore[arg-type]
        )


def test_other_actors_messages_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PostgreSQL cannot be reached, When the maintenance actor's message runs
    monkeypatch.setattr(attempt_claim, "get_runtime", lambda: _Runtime())
    message = _message(names.MAINTENANCE_ACTOR, names.MAINTENANCE_QUEUE, ())
    # Then the claim leaves it alone
    AttemptClaim().before_process_message(None, message)  # type: ignore[arg-type]
