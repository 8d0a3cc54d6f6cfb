"""Every setting of the product, read once from `TASKQ_*` environment variables.

Nothing else in the code base reads the environment: processes build one `Settings`
at start-up and pass it to the factories that need it (`make_engine`, `build_broker`).
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKQ_", extra="ignore")

    # Services
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/taskq"
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    rabbitmq_management_url: str = "http://127.0.0.1:15672"

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Comma-separated `scope:secret` entries (scopes: read, submit, admin). Empty: every
    # protected route answers 401 (the api never runs open); scripts/run.sh generates an
    # admin key into .taskq/api-key when none is configured.
    api_keys: SecretStr = SecretStr("")
    # Request bodies larger than this are refused with 413 before they are parsed
    # (a full 10,000-job batch of small jobs is a few MiB).
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    # Workers
    worker_processes: int = Field(default=2, ge=1)
    worker_threads: int = Field(default=8, ge=1)
    # Job messages each worker process holds unacknowledged (RabbitMQ prefetch); None: four
    # per thread. Admission (tokens) already decided what runs, so the messages a process
    # holds beyond its threads only keep them fed: each was claimed as it was delivered and
    # runs on the next free thread. Four per thread hides the claim's round trip (no-op jobs
    # 1.3 x the rate of two per thread at 1 process x 8 threads, evaluation_results.md,
    # fifteenth round); the threads' count gives strict order for long jobs (a process then
    # takes a message only when a thread is free). Dramatiq's `dramatiq_queue_prefetch`,
    # when set, wins.
    worker_prefetch: int | None = Field(default=None, ge=1, le=65535)
    # Claim each job message as it is delivered rather than when a thread takes it: with a
    # prefetch above the threads (TASKQ_WORKER_PREFETCH, four per thread by default), the
    # claims of the buffered messages share flushes. `running` then means "claimed by a
    # worker process": the attempt holds its tokens and runs on that process's next free
    # thread (its started_at and time limit are its handler's). A stopping worker withdraws
    # the claims of the messages it hands back (running -> pending), so none is spent.
    # False: claimed when a thread takes it.
    claim_on_delivery: bool = True
    # Under load (requests already waiting when a flush starts) the worker's writer waits up
    # to this long for more requests, until it holds WRITER_ENOUGH or a claim of every worker
    # thread: PostgreSQL's cost per job falls by half from 4 to 16 jobs a flush. Idle, a
    # request is flushed at once.
    writer_linger_ms: float = Field(default=3.0, ge=0, le=100)

    # Resource token pool: the capacity shared by every worker on every machine.
    pool_cpu_units: int = Field(default=8, ge=1)
    pool_memory_mb: int = Field(default=4096, ge=1)

    # Scheduling fairness. A job of priority level L (low=0 ... critical=3) ranks as if it
    # had become ready `L * aging_seconds_per_level` seconds earlier, so any job that has
    # waited that long outranks newcomers one level above it.
    aging_seconds_per_level: float = Field(default=60.0, ge=0)
    # A ready job waiting longer than this gets its tokens reserved: backfill stops passing it.
    starvation_seconds: float = Field(default=120.0, ge=0)
    # How many ready jobs, best ranked first, one admission step looks at.
    admission_window: int = Field(default=200, ge=1)

    # Job handlers: comma-separated importable modules that register job types with
    # @job_type; the api and every worker import them at start.
    job_modules: str = "queue_service.simulated_jobs"

    # Simulated job types: every default duration is multiplied by this.
    duration_scale: float = Field(default=1.0, ge=0)

    # Leases and maintenance
    # A running attempt's lease lives this long after the last heartbeat of its worker
    # process (every `heartbeat_seconds`): a killed worker's tokens come back within it,
    # whatever the job's timeout, and a live worker keeps its leases as long as it runs.
    lease_ttl_seconds: float = Field(default=10.0, gt=0)
    heartbeat_seconds: float = Field(default=2.0, gt=0)
    # SIGTERM to a worker: it takes no new message and lets running attempts finish for
    # this long; those still running then are given back (retried at once, not counted as
    # a failure) with their tokens, and the process exits.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    republish_after_seconds: float = Field(default=30.0, gt=0)
    maintenance_interval_seconds: float = Field(default=0.5, gt=0)
    cancel_poll_seconds: float = Field(default=0.5, gt=0)
    retry_jitter_ratio: float = Field(default=0.1, ge=0, le=1)

    # Finished jobs (with their events and edges) are deleted this many days after they
    # finished, unless an open dead letter still refers to them; 0 keeps them forever.
    retention_days: float = Field(default=30.0, ge=0)

    # Logs
    log_level: str = "INFO"

    # Metrics. Every worker process writes a heartbeat row this often; it counts as live
    # while its last heartbeat is younger than three periods.
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    # Each worker process serves its own /metrics on the first free port of
    # port .. port + worker_processes - 1 (for scrapes across machines); 0 = off.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)
    worker_metrics_host: str = "0.0.0.0"
    # prometheus_client's multiprocess directory (its own variable, without TASKQ_): the
    # api's /metrics then includes every process of this machine. scripts/run.sh sets it.
    prometheus_multiproc_dir: str | None = Field(
        default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR"
    )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
