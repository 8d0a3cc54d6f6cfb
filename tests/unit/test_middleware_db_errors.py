"""A job message whose lease or claim cannot be checked is skipped, never run unchecked.

Dramatiq swallows (logs) any exception other than a MiddlewareError raised before a
message runs, and then runs the actor: so a database error must become SkipMessage.
"""

from __future__ import annotations

from typing import Any

import dramatiq
import pytest
from dramatiq.middleware import SkipMessage

from actors.middleware import attempt_claim, resource_tokens
from actors.middleware.attempt_claim import AttemptClaim
from actors.middleware.resource_tokens import ResourceTokens
from queue_service import names


class _Unreachable:
    """An engine whose every connection attempt fails, like PostgreSQL being down."""

    def connect(self) -> Any:
        raise ConnectionError("PostgreSQL is unreachable")

    def begin(self) -> Any:
        raise ConnectionError("PostgreSQL is unreachable")


class _Runtime:
    engine = _Unreachable()
    worker_name = "taskq-worker test"


def _job_message() -> dramatiq.Message[Any]:
    return dramatiq.Message(
        queue_name=names.JOBS_QUEUE,
        actor_name=names.RUN_JOB_ACTOR,
        args=("job_x", 1),
        kwargs={},
        options={},
    )


@pytest.mark.parametrize(
    ("module", "middleware"),
    [(resource_tokens, ResourceTokens()), (attempt_claim, AttemptClaim())],
)
def test_database_error_before_a_job_skips_the_message(
    monkeypatch: pytest.MonkeyPatch, module: Any, middleware: dramatiq.Middleware
) -> None:
    # Given PostgreSQL cannot be reached
    monkeypatch.setattr(module, "get_runtime", lambda: _Runtime())

    # When a job message is about to run, Then it is skipped (not run, not swallowed)
    with pytest.raises(SkipMessage):
        middleware.before_process_message(None, _job_message())  # type: ignore[arg-type]


def test_other_actors_messages_are_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PostgreSQL cannot be reached, When the maintenance actor's message runs
    monkeypatch.setattr(resource_tokens, "get_runtime", lambda: _Runtime())
    message = dramatiq.Message(
        queue_name=names.MAINTENANCE_QUEUE,
        actor_name=names.MAINTENANCE_ACTOR,
        args=(),
        kwargs={},
        options={},
    )
    # Then the job middleware leaves it alone
    ResourceTokens().before_process_message(None, message)  # type: ignore[arg-type]
