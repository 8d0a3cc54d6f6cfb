"""ResourceTokens: tokens return on every exit path a live worker sees.

The actor returns its attempt's tokens itself, in the batch that records the outcome.
If the actor raised anything else (a bug in the product's own code between the claim and
the outcome), the attempt is finished here as a retryable error, which releases its lease
and tokens. A dead worker's lease expires and maintenance reclaims it.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from actors.completion import JobDeadLettered
from actors.middleware.attempt_claim import job_attempt
from actors.runtime import get_runtime
from queue_service.lifecycle import AttemptEnd
from queue_service.logging import get_logger
from queue_service.retry_policy import AttemptResult

log = get_logger(__name__)


class ResourceTokens(dramatiq.Middleware):
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        ids = job_attempt(message)
        # The actor returned (or dead-lettered) only after its end was committed or handed
        # to the writer (a success), which releases the lease: nothing is left behind.
        if ids is None or exception is None or isinstance(exception, JobDeadLettered):
            return
        log.warning(
            "tokens_left_behind", job_id=ids[0], attempt=ids[1], error=type(exception).__name__
        )
        get_runtime().writer.finish(
            AttemptEnd(
                ids[0],
                ids[1],
                AttemptResult.RETRYABLE_ERROR,
                f"worker error: {type(exception).__name__}: {exception}",
            )
        )
