"""GracefulShutdown: a worker stopped with SIGTERM gives back what it could not finish.

Dramatiq stops taking messages and waits `--worker-shutdown-timeout` (our
TASKQ_SHUTDOWN_GRACE_SECONDS, set by actors/cli.py) for running messages to finish. The
attempts still running after that are given back here: each ends as INTERRUPTED, which
retries the job at once with one more attempt in its budget (not counted as a failure)
and returns its tokens, so nothing waits for a lease to expire.
"""

from __future__ import annotations

import dramatiq

from actors.runtime import get_runtime
from queue_service.logging import get_logger

log = get_logger(__name__)


class GracefulShutdown(dramatiq.Middleware):
    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        runtime = get_runtime()
        try:
            given_back = runtime.writer.give_back_running()
        except Exception as error:  # PostgreSQL away: the leases expire instead
            log.warning("give_back_failed", error=type(error).__name__)
            return
        log.info("worker_shut_down", given_back=given_back)
