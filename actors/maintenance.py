"""The periodic maintenance actor, enqueued every minute by the periodiq scheduler."""

from __future__ import annotations

from datetime import UTC, datetime

import dramatiq
from periodiq import cron

from actors.runtime import get_runtime
from queue_service import names
from queue_service.maintenance import purge_finished_jobs, run_maintenance
from queue_service.rabbitmq.dead_letters import compact_dead_letter_queue


@dramatiq.actor(
    actor_name=names.MAINTENANCE_ACTOR,
    queue_name=names.MAINTENANCE_QUEUE,
    periodic=cron("* * * * *"),
    max_retries=0,
)
def maintenance_sweep() -> None:
    """The minute sweep: a maintenance pass (backstop for the workers' tickers), the
    dead-letter queue compaction that drops messages of replayed or discarded letters, and
    the retention purge of old finished jobs."""
    runtime = get_runtime()
    run_maintenance(runtime.engine, runtime.settings, runtime.broker)
    compact_dead_letter_queue(runtime.engine, runtime.broker)
    purge_finished_jobs(runtime.engine, runtime.settings, datetime.now(UTC))
