"""Builds the broker, the middleware stack and the actors for a worker or the scheduler."""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Retries
from periodiq import PeriodiqMiddleware

from actors.runtime import Runtime, install_runtime
from actors.writer import AttemptWriter
from queue_service.db import make_engine
from queue_service.job_types import load_job_modules
from queue_service.logging import configure_logging
from queue_service.rabbitmq.broker import build_broker, process_name
from queue_service.repository import pool as pool_repo
from queue_service.settings import get_settings


def setup(role: str) -> dramatiq.Broker:
    """Configure this process as `role` ("worker" or "scheduler") and declare the actors."""
    settings = get_settings()
    configure_logging(settings.log_level, process=role)
    load_job_modules(settings.job_modules)  # TASKQ_JOB_MODULES: registers the job types
    name = process_name(role)
    broker = build_broker(settings, connection_name=name)
    engine = make_engine(settings, pool_size=settings.worker_threads + 2)
    writer = AttemptWriter(engine, settings, broker, name)
    install_runtime(Runtime(settings, engine, broker, name, writer))
    with engine.begin() as conn:
        pool_repo.set_capacity(conn, settings.pool_cpu_units, settings.pool_memory_mb)

    # Imported here so the middleware and the runtime exist before the actors do.
    from actors.middleware.attempt_claim import AttemptClaim
    from actors.middleware.graceful_shutdown import GracefulShutdown
    from actors.middleware.maintenance_ticker import MaintenanceTicker
    from actors.middleware.resource_tokens import ResourceTokens
    from actors.middleware.worker_heartbeat import WorkerHeartbeat

    # Dramatiq's own retries and time limit are replaced: attempts are counted in
    # PostgreSQL (a redelivered message must not reset them) and each job's time limit is
    # enforced per attempt (actors/attempt_monitor.py). Retries(max_retries=0) only turns a
    # `throws` exception into message.fail(), i.e. a dead letter. Nothing else of
    # Dramatiq's: every middleware is called several times per message (handlers are not
    # Dramatiq actors, so its shutdown notifications and current message serve none).
    stack: list[dramatiq.Middleware] = [
        Retries(max_retries=0),
        PeriodiqMiddleware(skip_delay=60),
        ResourceTokens(),
        AttemptClaim(),
    ]
    if role == "worker":
        stack += [MaintenanceTicker(), WorkerHeartbeat(), GracefulShutdown()]
        if settings.claim_on_delivery:
            from actors.middleware.attempt_claim import claim_on_delivery, withdraw_on_requeue

            broker.on_delivery = claim_on_delivery
            broker.on_requeue = withdraw_on_requeue
    for middleware in stack:
        broker.add_middleware(middleware)

    import actors.maintenance
    import actors.run_job  # noqa: F401

    return broker
