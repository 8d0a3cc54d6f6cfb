"""AttemptClaim: each attempt runs at most once (SPEC scheduling rule 6), and only while
it holds its lease on the token pool.

The claim goes through the process's attempt writer: one guarded UPDATE (pending ->
running for exactly this attempt number, with an unstarted lease) per batch of claims.
A redelivered message, a message published twice, two workers racing for one attempt, a
cancelled job or an attempt maintenance already reclaimed: no row comes back, and the
message is skipped. The claimed row (type, payload, timeout) is handed to the actor, so
nothing reads the job again.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import dramatiq
import dramatiq.worker as dramatiq_worker
from dramatiq.broker import MessageProxy
from dramatiq.middleware import SkipMessage

from actors.runtime import get_runtime
from queue_service import lifecycle, metrics, names
from queue_service.db import in_transaction
from queue_service.logging import get_logger
from queue_service.repository.jobs import ClaimedAttempt
from queue_service.settings import Settings

log = get_logger(__name__)

# How long a stopping worker waits, in all, for the answers of claims still in flight.
WITHDRAW_WAIT_SECONDS = 10.0

# The attempt this worker thread claimed for the message it is processing.
_claimed: ContextVar[ClaimedAttempt | None] = ContextVar("taskq_claimed_attempt", default=None)


def claimed_attempt() -> ClaimedAttempt:
    """The attempt the running actor was given by the claim."""
    claimed = _claimed.get()
    if claimed is None:
        raise RuntimeError("no claimed attempt: AttemptClaim is not in the middleware stack")
    return claimed


def job_attempt(message: MessageProxy | dramatiq.Message[Any]) -> tuple[str, int] | None:
    """(job_id, attempt) of a job message, None for other actors' messages."""
    if message.actor_name != names.RUN_JOB_ACTOR:
        return None
    job_id, attempt = message.args
    return str(job_id), int(attempt)


def claim_on_delivery(message: MessageProxy) -> None:
    """On the consumer thread, as a job message is delivered: hand its claim to the writer
    without waiting; the thread that takes the message waits for the answer (usually in
    already). Claims of messages delivered together share a flush."""
    ids = job_attempt(message)
    if ids is not None:
        job_id, attempt = ids
        try:
            claim = get_runtime().writer.claim_later(job_id, attempt, _redelivered(message))
        except Exception:  # never stop the consumer: the thread will claim it itself
            log.exception("claim_on_delivery_failed", job_id=job_id, attempt=attempt)
            return
        setattr(message, "_taskq_claim", claim)  # noqa: B010  (an attribute of its own)


def withdraw_on_requeue(messages: list[MessageProxy]) -> None:
    """A stopping worker hands `messages` back to RabbitMQ (Dramatiq's shutdown, after its
    threads stopped): withdraw the claims made on their delivery, whose handlers never
    started, so another worker's claim of each redelivered message succeeds and no attempt
    is spent. What cannot be withdrawn (PostgreSQL away) is given back as interrupted at
    the end of the shutdown, as any attempt still running."""
    claims: list[tuple[str, int]] = []
    deadline = time.monotonic() + WITHDRAW_WAIT_SECONDS  # for all the claims' answers
    for message in messages:
        ahead: Future[ClaimedAttempt | None] | None = getattr(message, "_taskq_claim", None)
        if ahead is None:
            continue
        try:
            claimed = ahead.result(timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # the claim failed or is stuck: left to the end of the shutdown
            continue
        if claimed is not None:
            claims.append((claimed.job_id, claimed.attempt))
    if not claims:
        return
    runtime = get_runtime()
    try:
        withdrawn = in_transaction(
            runtime.engine,
            lambda conn: lifecycle.withdraw_unstarted(
                conn, runtime.settings, claims, runtime.worker_name, datetime.now(UTC)
            ),
        )
    except Exception as error:
        log.warning("claims_not_withdrawn", count=len(claims), error=type(error).__name__)
        return
    log.info("claims_withdrawn", count=len(withdrawn), of=len(claims))


def queue_prefetch(settings: Settings, threads: int) -> int:
    """Job messages a worker process holds: Dramatiq's own `dramatiq_queue_prefetch` when
    set, else TASKQ_WORKER_PREFETCH, else four per thread (settings.worker_prefetch)."""
    return dramatiq_worker.QUEUE_PREFETCH or settings.worker_prefetch or 4 * threads


class AttemptClaim(dramatiq.Middleware):
    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Read by the consumer the worker adds next (Dramatiq's default: twice the threads).
        worker.queue_prefetch = queue_prefetch(get_runtime().settings, worker.worker_threads)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # The writer stops lingering for a fuller flush once every thread waits on it.
        get_runtime().writer.threads = worker.worker_threads

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        _claimed.set(None)
        ids = job_attempt(message)
        if ids is None:
            return
        job_id, attempt = ids
        runtime = get_runtime()
        try:
            ahead: Future[ClaimedAttempt | None] | None = getattr(message, "_taskq_claim", None)
            if ahead is not None:
                claimed = ahead.result()
            else:
                claimed = runtime.writer.claim(job_id, attempt, _redelivered(message))
        except Exception as error:
            # Dramatiq logs and swallows any other exception raised here and then runs the
            # actor unchecked. Skipping acknowledges the message; PostgreSQL still holds
            # the admitted attempt, which maintenance republishes.
            log.warning(
                "message_skipped",
                job_id=job_id,
                attempt=attempt,
                reason="database_error",
                error=type(error).__name__,
            )
            raise SkipMessage() from error
        if claimed is None:
            # Another delivery claimed it, or its lease is gone (cancelled, reclaimed).
            log.info("message_skipped", job_id=job_id, attempt=attempt, reason="already_claimed")
            raise SkipMessage()
        _claimed.set(claimed)
        runtime.busy_threads.started()
        log.debug("job_claimed", job_id=job_id, attempt=attempt, worker=runtime.worker_name)
        metrics.job_started(claimed.priority, _waited(claimed.pending_since))

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if _claimed.get() is not None:  # its handler ran on this thread
            get_runtime().busy_threads.ended()
            _claimed.set(None)

    after_skip_message = after_process_message


def _redelivered(message: MessageProxy) -> bool:
    """Delivered, the message is Dramatiq's RabbitMQ message itself, which carries
    `redelivered`; a worker thread sees it through a proxy around it (which also finds the
    claim `claim_on_delivery` set on it)."""
    own = getattr(message, "redelivered", None)
    if own is not None:
        return bool(own)
    delivered = getattr(message, "_message", None)
    return bool(getattr(delivered, "redelivered", False))


def _waited(ready_since: datetime | None) -> float | None:
    return None if ready_since is None else (datetime.now(UTC) - ready_since).total_seconds()
