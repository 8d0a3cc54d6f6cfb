"""ResourceTokens: a job message runs only while its attempt holds a lease on the pool.

Admission granted the lease before publishing. A message without one (a stale duplicate,
a cancelled job, an attempt maintenance already reclaimed) is skipped. The actor returns
tokens itself, in the transaction that records the outcome; if it raised anything else
(e.g. PostgreSQL went away mid-completion), a lease the attempt still holds is given back
here by finishing the attempt as failed, so tokens return on every exit path a live
worker sees. A dead worker's lease expires and maintenance reclaims it.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from actors.runtime import get_runtime
from queue_service import names
from queue_service.db import in_transaction
from queue_service.logging import get_logger
from queue_service.repository import leases as leases_repo

log = get_logger(__name__)


def job_attempt(message: MessageProxy | dramatiq.Message[Any]) -> tuple[str, int] | None:
    """(job_id, attempt) of a job message, None for other actors' messages."""
    if message.actor_name != names.RUN_JOB_ACTOR:
        return None
    job_id, attempt = message.args
    return str(job_id), int(attempt)


def skip_unverifiable(ids: tuple[str, int], error: Exception) -> SkipMessage:
    """The message cannot be checked (PostgreSQL unreachable): skip it, do not run it.

    Dramatiq logs and swallows any other exception raised before a message runs, and the
    actor would then run unchecked. Skipping acknowledges the message; PostgreSQL still
    holds the admitted attempt, which maintenance republishes.
    """
    log.warning(
        "message_skipped", job_id=ids[0], attempt=ids[1], reason="database_error", error=str(error)
    )
    return SkipMessage()


class ResourceTokens(dramatiq.Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        ids = job_attempt(message)
        if ids is None:
            return
        runtime = get_runtime()
        try:
            with runtime.engine.connect() as conn:
                if leases_repo.holds_lease(conn, *ids):
                    return
        except Exception as error:
            raise skip_unverifiable(ids, error) from error
        log.info("message_skipped", job_id=ids[0], attempt=ids[1], reason="no_lease")
        raise SkipMessage()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        from actors.completion import JobDeadLettered, finish_and_publish
        from queue_service.retry_policy import AttemptResult

        ids = job_attempt(message)
        # The actor returned (or dead-lettered) only after its completion committed, which
        # released the lease: nothing can be left behind, so skip the lookup.
        if ids is None or exception is None or isinstance(exception, JobDeadLettered):
            return

        runtime = get_runtime()
        still_held = in_transaction(
            runtime.engine, lambda conn: leases_repo.holds_lease(conn, *ids)
        )
        if still_held:
            log.warning("tokens_left_behind", job_id=ids[0], attempt=ids[1], error=str(exception))
            finish_and_publish(
                ids[0], ids[1], AttemptResult.RETRYABLE_ERROR, f"worker error: {exception}", None
            )
