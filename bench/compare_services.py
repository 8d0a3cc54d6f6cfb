"""Services and processes for bench/compare.py: a fresh database and vhost per run, the
product's processes started as scripts/run.sh starts them, the baseline workers, and the
token-pool sampler. Everything on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.product import Process, Product, free_port, wait_until  # noqa: E402

BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
AMQP = "amqp://guest:guest@127.0.0.1:5672"
MANAGEMENT = "http://127.0.0.1:15672"
OURS_DB = "taskq_compare"
TEMPLATE_DB = "taskq_compare_template"
VHOSTS = {
    "ours": "taskq_compare",
    "dramatiq": "taskq_compare_dramatiq",
    "celery": "taskq_compare_celery",
}
# Sized so the token pool is never what limits throughput: 16 threads run at most 16
# no-op jobs (1 CPU unit, 128 MB each) while up to 128 are admitted ahead of them (the
# 2 x 32 messages two processes prefetch, and as many waiting in RabbitMQ). A pool holding
# far more only lengthens the admitted backlog in RabbitMQ (leases not started within
# TASKQ_REPUBLISH_AFTER_SECONDS are published again): a measure of the backlog, not of
# throughput.
POOL_CPU_UNITS = 128
POOL_MEMORY_MB = 128 * 128
THREADS = 8
SHAPES = [1, 2]  # worker processes, THREADS threads each
# Messages each worker process prefetches, the same for all three systems (Celery's
# prefetch multiplier is this over its threads); None: the product's default, four per
# thread (settings.worker_prefetch).
PREFETCH: int | None = None
# Our workers claim each message as it is delivered (TASKQ_CLAIM_ON_DELIVERY, the default).
CLAIM_ON_DELIVERY = True


def prefetch() -> int:
    return PREFETCH or 4 * THREADS


def celery_prefetch_multiplier() -> int:
    """Celery prefetches its multiplier times its threads per worker process."""
    return max(1, prefetch() // THREADS)


def use_prefix(prefix: str) -> None:
    """Name this run's databases and vhosts `prefix`, `prefix_template`, `prefix_dramatiq`
    and `prefix_celery` (default taskq_compare), so runs side by side do not collide."""
    global OURS_DB, TEMPLATE_DB
    OURS_DB, TEMPLATE_DB = prefix, f"{prefix}_template"
    VHOSTS.update(ours=prefix, dramatiq=f"{prefix}_dramatiq", celery=f"{prefix}_celery")


def reset_vhost(name: str) -> None:
    """Delete and re-create a RabbitMQ vhost (management API): no queue survives a run."""
    with httpx.Client(base_url=MANAGEMENT, auth=("guest", "guest"), timeout=30) as mq:
        mq.delete(f"/api/vhosts/{name}")
        mq.put(f"/api/vhosts/{name}").raise_for_status()
        mq.put(
            f"/api/permissions/{name}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        ).raise_for_status()


def rabbitmq_versions() -> dict[str, str]:
    with httpx.Client(base_url=MANAGEMENT, auth=("guest", "guest"), timeout=10) as mq:
        overview = mq.get("/api/overview").json()
    return {
        "rabbitmq": str(overview.get("rabbitmq_version")),
        "erlang": str(overview.get("erlang_version")),
    }


def server_pids() -> dict[str, int]:
    """The shared PostgreSQL postmaster and RabbitMQ node (beam.smp) of 127.0.0.1."""
    with psycopg.connect(f"{PG}/postgres") as conn:
        row = conn.execute("SHOW data_directory").fetchone()
    postmaster = int((Path(str(row[0] if row else "")) / "postmaster.pid").read_text().split()[0])
    with httpx.Client(base_url=MANAGEMENT, auth=("guest", "guest"), timeout=10) as mq:
        node = mq.get("/api/nodes").json()[0]
    return {"postgresql": postmaster, "rabbitmq": int(node["os_pid"])}


def postgres_version() -> str:
    with psycopg.connect(f"{PG}/postgres") as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def ours_env(api_key: str) -> dict[str, str]:
    return {
        "TASKQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{OURS_DB}",
        "TASKQ_BROKER_URL": f"{AMQP}/{VHOSTS['ours']}",
        "TASKQ_LOG_LEVEL": "INFO",  # the default: its per-job lines are part of the cost
        "TASKQ_POOL_CPU_UNITS": str(POOL_CPU_UNITS),
        "TASKQ_POOL_MEMORY_MB": str(POOL_MEMORY_MB),
        "TASKQ_API_KEYS": f"admin:{api_key}",
        "TASKQ_CLAIM_ON_DELIVERY": "1" if CLAIM_ON_DELIVERY else "0",
        # The simulated types, and the benchmark's own sync no-op (bench/noop_ours.py).
        "TASKQ_JOB_MODULES": "queue_service.simulated_jobs,bench.noop_ours",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    }


def recreate_database(name: str, template: str | None = None) -> None:
    """Drop database `name` (its connections closed) and create it again, empty or as a
    copy of `template`. Names are quoted: a prefix such as `full` is an SQL keyword."""
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        drop_database(conn, name)
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
        conn.execute(create)


def drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate_template() -> None:
    """Migrate a template database once (alembic, as scripts/setup.sh does); each run of
    ours starts from a copy of it."""
    recreate_database(TEMPLATE_DB)
    env = {
        **os.environ,
        "TASKQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEMPLATE_DB}",
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def fresh_database() -> None:
    recreate_database(OURS_DB, template=TEMPLATE_DB)


def drop_databases() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for name in (OURS_DB, TEMPLATE_DB):
            drop_database(conn, name)


def start_ours(api_key: str, log_dir: Path, processes: int, workers: bool = True) -> Product:
    """api (uvicorn), workers (dramatiq CLI) and scheduler (periodiq) as scripts/run.sh
    starts them, on a fresh database and vhost."""
    fresh_database()
    reset_vhost(VHOSTS["ours"])
    product = Product(env=ours_env(api_key), log_dir=log_dir)
    try:
        product.start_api()
        if workers:
            product.start_worker(processes=processes, threads=THREADS, prefetch=prefetch())
            product.start_scheduler()
    except BaseException:
        product.stop()
        raise
    return product


def start_more_api(product: Product, count: int) -> list[str]:
    """`count` more api processes (uvicorn, as scripts/run.sh starts one) beside the
    product's first, each on its own port; returns every api's base URL."""
    urls = [product.base_url]
    for index in range(count):
        port = free_port()
        process = product._spawn(
            f"api-{index + 2}",
            [
                str(BIN / "uvicorn"),
                "api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-config",
                str(ROOT / "api" / "log_config.json"),
            ],
        )
        url = f"http://127.0.0.1:{port}"

        def ready(url: str = url, process: Process = process) -> bool:
            if process.popen.poll() is not None:
                raise RuntimeError(f"api exited:\n{process.log_tail()}")
            try:
                return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, 0.1, f"api {url} to be ready")
        urls.append(url)
    return urls


@dataclass
class Baseline:
    """Worker processes of plain Dramatiq or Celery, each its own session."""

    processes: list[Process] = field(default_factory=list)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def _spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log_path = log_dir / f"{name}.log"
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Process(name, popen, log_path)


def _wait_for_log(process: Process, text: str, count: int) -> None:
    def ready() -> bool:
        if process.popen.poll() is not None:
            raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")
        return process.log_path.read_text(errors="replace").count(text) >= count

    wait_until(ready, 60, 0.1, f"{process.name} to log {text!r}")


def start_dramatiq(processes: int, count_dir: Path, log_dir: Path) -> Baseline:
    env = {
        "BENCH_BROKER_URL": f"{AMQP}/{VHOSTS['dramatiq']}",
        "BENCH_COUNT_DIR": str(count_dir),
        "dramatiq_queue_prefetch": str(prefetch()),
    }
    argv = [str(BIN / "dramatiq"), "bench.noop_dramatiq", "--processes", str(processes)]
    process = _spawn("dramatiq", [*argv, "--threads", str(THREADS)], env, log_dir)
    baseline = Baseline([process])
    try:
        _wait_for_log(process, "ready for action", processes)
    except BaseException:
        baseline.stop()
        raise
    return baseline


def start_celery(processes: int, count_dir: Path, log_dir: Path) -> Baseline:
    """`processes` Celery workers, each one process with a pool of 8 threads."""
    env = {
        "BENCH_BROKER_URL": f"{AMQP}/{VHOSTS['celery']}",
        "BENCH_COUNT_DIR": str(count_dir),
        "BENCH_CELERY_PREFETCH_MULTIPLIER": str(celery_prefetch_multiplier()),
    }
    baseline = Baseline()
    try:
        for index in range(processes):
            argv = [
                str(BIN / "celery"),
                "-A",
                "bench.noop_celery",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(THREADS),
                "--hostname",
                f"bench{index}@%h",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "WARNING",
            ]
            baseline.processes.append(_spawn(f"celery-{index}", argv, env, log_dir))

        def ready() -> bool:
            for process in baseline.processes:
                if process.popen.poll() is not None:
                    raise AssertionError(f"{process.name} exited:\n{process.log_tail()}")
            return len(list(count_dir.glob("ready-*"))) >= processes

        wait_until(ready, 60, 0.1, f"{processes} Celery workers to consume")
    except BaseException:
        baseline.stop()
        raise
    return baseline


class PoolSampler(threading.Thread):
    """Reads the token pool every `interval` seconds while ours runs."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.halt = threading.Event()
        self.samples = 0
        self.max_cpu_used = 0
        self.max_memory_used = 0
        self.capacity: tuple[int, int] = (0, 0)
        self.violations: list[dict[str, Any]] = []

    def run(self) -> None:
        with psycopg.connect(f"{PG}/{OURS_DB}", autocommit=True) as conn:
            while not self.halt.is_set():
                row = conn.execute(
                    "SELECT cpu_used, cpu_capacity, memory_used, memory_capacity FROM resource_pool"
                ).fetchone()
                if row:
                    cpu_used, cpu_cap, mem_used, mem_cap = row
                    self.samples += 1
                    self.capacity = (cpu_cap, mem_cap)
                    self.max_cpu_used = max(self.max_cpu_used, cpu_used)
                    self.max_memory_used = max(self.max_memory_used, mem_used)
                    if cpu_used > cpu_cap or mem_used > mem_cap:
                        self.violations.append(
                            {
                                "at": time.time(),
                                "cpu": [cpu_used, cpu_cap],
                                "mem": [mem_used, mem_cap],
                            }
                        )
                self.halt.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(5)
        return {
            "samples": self.samples,
            "max_cpu_used": self.max_cpu_used,
            "max_memory_used": self.max_memory_used,
            "cpu_capacity": self.capacity[0],
            "memory_capacity": self.capacity[1],
            "violations": self.violations[:10],
            "violation_count": len(self.violations),
        }
