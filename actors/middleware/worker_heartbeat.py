"""WorkerHeartbeat: each worker process says it is alive, and exports its metrics.

After boot, a small thread upserts this process's row in worker_processes every
`worker_heartbeat_seconds` (the console's live workers, `taskq_workers_live`), with its
threads and how many run a job's handler (`taskq_worker_threads`), and forgets
rows silent for ten periods (a process killed with -9 never says goodbye). The process
serves its own /metrics when `worker_metrics_port` is set. At shutdown the row goes away
and, in prometheus_client's multiprocess mode, the process is marked dead.
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import UTC, datetime, timedelta

import dramatiq
import sqlalchemy as sa

from actors.runtime import get_runtime
from queue_service import metrics
from queue_service.db import in_transaction
from queue_service.logging import get_logger
from queue_service.repository import workers as workers_repo

log = get_logger(__name__)


class WorkerHeartbeat(dramatiq.Middleware):
    def __init__(self, role: str = "worker") -> None:
        self._role = role
        self._stop = threading.Event()
        self._metrics_port: int | None = None
        self._threads: int | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._threads = worker.worker_threads
        settings = get_runtime().settings
        self._metrics_port = metrics.serve_process_metrics(
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            settings.worker_processes,
            settings.prometheus_multiproc_dir,
        )
        if self._metrics_port is not None:
            log.info("metrics_serving", port=self._metrics_port)
        self._beat()
        threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True).start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        runtime = get_runtime()
        try:
            in_transaction(
                runtime.engine, lambda conn: workers_repo.unregister(conn, runtime.worker_name)
            )
        except Exception as error:  # the row ages out; shutdown must go on
            log.warning("heartbeat_unregister_failed", error=str(error))
        metrics.process_exited(runtime.settings.prometheus_multiproc_dir)

    def _loop(self) -> None:
        interval = get_runtime().settings.worker_heartbeat_seconds
        while not self._stop.wait(interval):
            try:
                self._beat()
            except Exception as error:  # keep beating: PostgreSQL may come back
                log.warning("heartbeat_failed", error=str(error))

    def _beat(self) -> None:
        runtime = get_runtime()
        now = datetime.now(UTC)
        silent_before = now - timedelta(seconds=10 * runtime.settings.worker_heartbeat_seconds)
        busy = runtime.busy_threads.count

        def write(conn: sa.Connection) -> None:
            workers_repo.heartbeat(
                conn,
                name=runtime.worker_name,
                role=self._role,
                host=socket.gethostname(),
                pid=os.getpid(),
                metrics_port=self._metrics_port,
                now=now,
                threads=self._threads,
                busy_threads=busy,
            )
            workers_repo.forget_silent(conn, silent_before)

        in_transaction(runtime.engine, write)
