"""AttemptClaim: each attempt runs at most once (SPEC scheduling rule 6).

The claim is one guarded UPDATE (pending -> running for exactly this attempt number).
A redelivered message, a message published twice, or two workers racing for the same
attempt: only one claim returns a row, the others skip the message.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dramatiq
import sqlalchemy as sa
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from actors.middleware.resource_tokens import job_attempt, skip_unverifiable
from actors.runtime import get_runtime
from queue_service.db import in_transaction
from queue_service.logging import get_logger
from queue_service.repository import events as events_repo
from queue_service.repository import jobs as jobs_repo
from queue_service.repository import leases as leases_repo

log = get_logger(__name__)


class AttemptClaim(dramatiq.Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        ids = job_attempt(message)
        if ids is None:
            return
        job_id, attempt = ids
        runtime = get_runtime()

        def claim(conn: sa.Connection) -> bool:
            now = datetime.now(UTC)
            job = jobs_repo.claim_attempt(conn, job_id, attempt, now)
            if job is None:
                return False
            expires = now + timedelta(
                seconds=job.timeout_seconds + runtime.settings.lease_grace_seconds
            )
            if not leases_repo.start_lease(
                conn, job_id, attempt, expires, runtime.worker_name, now
            ):
                raise _LeaseLost()  # rolls the claim back
            events_repo.record_events(
                conn,
                [
                    events_repo.transition(
                        job_id,
                        attempt,
                        "pending",
                        "running",
                        now,
                        message=f"attempt {attempt} started on {runtime.worker_name}",
                        data={"worker": runtime.worker_name, "redelivered": _redelivered(message)},
                    )
                ],
            )
            return True

        try:
            claimed = in_transaction(runtime.engine, claim)
        except _LeaseLost:
            claimed = False
        except Exception as error:
            raise skip_unverifiable(ids, error) from error
        if not claimed:
            log.info("message_skipped", job_id=job_id, attempt=attempt, reason="already_claimed")
            raise SkipMessage()
        log.info("job_claimed", job_id=job_id, attempt=attempt, worker=runtime.worker_name)


class _LeaseLost(Exception):
    """The lease vanished between the token check and the claim (e.g. a cancel)."""


def _redelivered(message: MessageProxy) -> bool:
    delivered = getattr(message, "_message", None)
    return bool(getattr(delivered, "redelivered", False))
