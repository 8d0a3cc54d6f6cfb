"""MaintenanceTicker: runs maintenance every `maintenance_interval_seconds` in each worker.

periodiq's one-minute resolution is too coarse for retry backoffs of one second and for
returning a dead worker's tokens promptly, so every worker process runs a small ticker
thread. PostgreSQL's advisory lock lets one pass run at a time across all processes.
"""

from __future__ import annotations

import threading

import dramatiq

from actors.runtime import get_runtime
from queue_service.logging import get_logger
from queue_service.maintenance import run_maintenance

log = get_logger(__name__)


class MaintenanceTicker(dramatiq.Middleware):
    def __init__(self) -> None:
        self._stop = threading.Event()

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        threading.Thread(target=self._loop, name="maintenance-ticker", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def _loop(self) -> None:
        runtime = get_runtime()
        interval = runtime.settings.maintenance_interval_seconds
        while not self._stop.wait(interval):
            try:
                run_maintenance(runtime.engine, runtime.settings, runtime.broker)
            except Exception as error:  # keep ticking: the next pass retries everything
                log.warning("maintenance_failed", error=str(error))
