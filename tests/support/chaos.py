"""What the chaos tests need: private PostgreSQL and RabbitMQ, the product as scripts/run.sh
runs it (supervised), a sampler of the token pool, and the checks every scenario ends with.

The shared PostgreSQL and RabbitMQ on 5432/5672 are never stopped: every fault is injected
into private instances on other ports (see tests/chaos/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import sqlalchemy as sa
from pytest_postgresql.executors import PostgreSQLExecutor

from queue_service.repository.leases import RUNS_ITS_ATTEMPT
from tests.support.product import API_KEYS, ROOT, api_keys_env, bearer, free_port, wait_until

TERMINAL = {"completed", "failed", "cancelled"}
END_EVENTS = ("job_completed", "job_retrying", "job_failed", "job_cancelled")


# --- private PostgreSQL ------------------------------------------------------------------


def find_pg_ctl() -> str:
    """Debian's newest pg_ctl (/usr/lib/postgresql/*/bin), else the one on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    found = str(candidates[-1]) if candidates else shutil.which("pg_ctl")
    if not found:
        raise RuntimeError("pg_ctl not found: install postgresql")
    return found


def private_postgresql(base: Path, port: int) -> PostgreSQLExecutor:
    """A pytest-postgresql executor for a throw-away cluster in `base` on `port`.

    PostgreSQL refuses to run as root: as root, pg_ctl runs as the `postgres` user through
    a small wrapper, and `base` belongs to that user.
    """
    pg_ctl = find_pg_ctl()
    executable = pg_ctl
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        wrapper = base / "pg_ctl"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'exec setpriv --reuid=postgres --regid=postgres --init-groups {pg_ctl} "$@"\n'
        )
        wrapper.chmod(0o755)
        executable = str(wrapper)
    base.chmod(0o755)
    return PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname="taskq_chaos",
        user="postgres",
        # A throw-away cluster: durability only across clean restarts.
        postgres_options="-c fsync=off -c full_page_writes=off -c max_connections=200",
    )


def wait_accepting(port: int, timeout: float = 60) -> None:
    """Wait until PostgreSQL accepts connections (its port opens while it still recovers)."""

    def accepting() -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres").close()
        except psycopg.OperationalError:
            return False
        return True

    wait_until(accepting, timeout, 0.1, f"PostgreSQL on port {port} to accept connections")


def create_database(port: int, name: str) -> None:
    wait_accepting(port)
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def base_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- the product, supervised by scripts/run.sh -------------------------------------------


@dataclass
class Supervised:
    """`bash scripts/run.sh` (api, worker groups, scheduler) against the private services."""

    env: dict[str, str]
    log_path: Path
    workers: int = 2
    api_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            timeout=30,
            headers=bearer(API_KEYS["admin"]),
        )

    def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "TASKQ_API_HOST": "127.0.0.1",
            "TASKQ_API_PORT": str(self.api_port),
            "TASKQ_WORKER_PROCESSES": str(self.workers),
            "TASKQ_SKIP_SERVICES": "1",  # the private services are the tests' business
            "TASKQ_SKIP_MIGRATIONS": "1",
            "TASKQ_API_KEYS": api_keys_env(),  # the test product's keys, not a generated one
        }
        self.popen = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "run.sh")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.ready, 60, 0.2, "the api to be ready")
        wait_until(lambda: self.ready_workers() >= self.workers, 60, 0.2, "the workers to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready_workers(self) -> int:
        return self.log().count("Worker process is ready for action")

    def ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"run.sh exited:\n{self.log()[-3000:]}")
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _tree(self) -> list[psutil.Process]:
        assert self.popen is not None
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def worker_processes(self) -> list[psutil.Process]:
        """The dramatiq worker processes (children of a dramatiq master, which scripts/run.sh
        starts as `python -m actors.cli actors.worker`)."""

        def is_worker(process: psutil.Process) -> bool:
            command = " ".join(process.cmdline())
            return "dramatiq" in command or "actors.cli" in command

        found = []
        for process in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                parent = process.parent()
                if parent is not None and is_worker(process) and is_worker(parent):
                    found.append(process)
        return found

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM to run.sh (as Ctrl-C would), SIGKILL to its session if it hangs."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.http.close()
        return self.popen.returncode

    # --- requests ---------------------------------------------------------------------

    def submit_batch(self, bodies: list[dict[str, Any]], chunk: int = 500) -> None:
        for i in range(0, len(bodies), chunk):
            response = self.http.post("/jobs/batch", json={"jobs": bodies[i : i + chunk]})
            assert response.status_code == 201, response.text

    def probe_job_completes(self, job_id: str, timeout: float = 60) -> float:
        """Submit one short job and wait for it to complete; the seconds it took."""
        started = time.monotonic()
        response = self.http.post("/jobs", json={"job_id": job_id, "type": "noop"})
        assert response.status_code == 201, response.text
        wait_until(
            lambda: self.http.get(f"/jobs/{job_id}").json()["status"] == "completed",
            timeout,
            0.1,
            f"the probe job {job_id} to complete",
        )
        return time.monotonic() - started


# --- workloads -------------------------------------------------------------------------


def random_dag(
    prefix: str,
    size: int,
    seed: int,
    *,
    duration: tuple[float, float] = (0.05, 0.3),
    timeout_seconds: float = 5.0,
    max_attempts: int = 5,
) -> list[dict[str, Any]]:
    """`size` jobs in topological order; job i depends on up to 2 of the 50 before it."""
    rng = random.Random(seed)
    ids = [f"{prefix}_{i:04d}" for i in range(size)]
    bodies = []
    for i, job_id in enumerate(ids):
        window = ids[max(0, i - 50) : i]
        deps = rng.sample(window, k=min(len(window), rng.choice([0, 0, 1, 1, 2])))
        bodies.append(
            {
                "job_id": job_id,
                "type": rng.choice(["quick_task", "data_fetch", "notification"]),
                "priority": rng.choice(["critical", "high", "normal", "low"]),
                "payload": {"duration_seconds": round(rng.uniform(*duration), 3)},
                "resource_requirements": {
                    "cpu_units": rng.randint(1, 2),
                    "memory_mb": rng.choice([64, 128, 256]),
                },
                "depends_on": deps,
                "timeout_seconds": timeout_seconds,
                "retry_config": {
                    "max_attempts": max_attempts,
                    "backoff_multiplier": 1,
                    "initial_delay_seconds": 0.1,
                    "max_delay_seconds": 0.1,
                },
            }
        )
    return bodies


# --- observation -----------------------------------------------------------------------


class PoolSampler:
    """Samples resource_pool every `interval` s on its own connection, through outages."""

    def __init__(self, database_url: str, interval: float = 0.1) -> None:
        self.dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
        self.interval = interval
        self.samples = 0
        self.failed_samples = 0
        self.max_cpu_used = 0
        self.max_memory_used = 0
        self.violations: list[tuple[int, int, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PoolSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                row = conn.execute(
                    "SELECT cpu_used, cpu_capacity, memory_used, memory_capacity FROM resource_pool"
                ).fetchone()
            except psycopg.Error:
                self.failed_samples += 1
                conn = None
                continue
            assert row is not None
            cpu_used, cpu_capacity, memory_used, memory_capacity = row
            self.samples += 1
            self.max_cpu_used = max(self.max_cpu_used, cpu_used)
            self.max_memory_used = max(self.max_memory_used, memory_used)
            if not (0 <= cpu_used <= cpu_capacity and 0 <= memory_used <= memory_capacity):
                self.violations.append(row)
        if conn is not None:
            conn.close()


def progress(engine: sa.Engine, prefix: str) -> tuple[int, int]:
    """(completed, all) jobs whose id starts with `prefix`."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM jobs "
                "WHERE id LIKE :prefix"
            ),
            {"prefix": f"{prefix}%"},
        ).one()
    return int(row[0]), int(row[1])


def wait_progress(engine: sa.Engine, prefix: str, fraction: float, timeout: float) -> None:
    def reached() -> bool:
        done, total = progress(engine, prefix)
        return total > 0 and done >= fraction * total

    wait_until(reached, timeout, 0.1, f"{fraction:.0%} of {prefix} to complete")


def leases_of_worker(engine: sa.Engine, pid: int) -> list[tuple[str, int]]:
    """(job_id, attempt) of the running attempts claimed by worker process `pid` (a lease
    whose attempt already ended, its release not yet committed, is not one: maintenance
    just releases it)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.job_id, l.attempt FROM leases l JOIN jobs j ON j.id = l.job_id "
                f"WHERE l.worker LIKE :worker AND {RUNS_ITS_ATTEMPT}"
            ),
            {"worker": f"%:{pid}"},
        ).all()
    return [(r[0], int(r[1])) for r in rows]


def running_again_at(engine: sa.Engine, lost: list[tuple[str, int]]) -> datetime | None:
    """When the last of the `lost` attempts' jobs started a later attempt (or None yet)."""
    if not lost:
        return None
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT l.job_id, min(e.at) FROM unnest(CAST(:jobs AS text[]), "
                "CAST(:attempts AS int[])) AS l(job_id, attempt) "
                "LEFT JOIN job_events e ON e.job_id = l.job_id AND e.attempt > l.attempt "
                "AND e.event = 'job_running' GROUP BY l.job_id"
            ),
            {"jobs": [j for j, _ in lost], "attempts": [a for _, a in lost]},
        ).all()
    if any(at is None for _, at in rows):
        return None
    return max(at for _, at in rows)


def db_now(engine: sa.Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT clock_timestamp()")).scalar_one()


# --- the checks every scenario ends with ------------------------------------------------


def wait_all_completed(engine: sa.Engine, prefix: str, expected: int, timeout: float) -> float:
    """Wait until every job of `prefix` is terminal; the seconds waited."""
    started = time.monotonic()

    def all_terminal() -> bool:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT count(*), count(*) FILTER (WHERE status IN "
                    "('completed', 'failed', 'cancelled')) FROM jobs WHERE id LIKE :p"
                ),
                {"p": f"{prefix}%"},
            ).one()
        return int(row[0]) == expected and int(row[1]) == expected

    wait_until(all_terminal, timeout, 0.25, f"all {expected} jobs of {prefix} to be terminal")
    return time.monotonic() - started


def check_invariants(
    engine: sa.Engine, prefix: str, expected: int, *, lost_attempts_allowed: bool = False
) -> dict[str, Any]:
    """Every accepted job completed, no attempt ran twice or overlapped another of its job,
    no token or lease left; attempts beyond the first only for lost workers when allowed.
    Returns figures for the report."""
    with engine.connect() as conn:
        statuses: dict[str, int] = dict(
            conn.execute(
                sa.text("SELECT status, count(*) FROM jobs WHERE id LIKE :p GROUP BY status"),
                {"p": f"{prefix}%"},
            ).all()
        )
        # runs of an attempt: its claims, less the claims withdrawn before the handler
        # started (running -> pending, a stopping worker's prefetched messages)
        twice = conn.execute(
            sa.text(
                "SELECT job_id, attempt, count(*) FILTER (WHERE event = 'job_running') "
                "  - count(*) FILTER (WHERE event = 'job_pending' "
                "    AND previous_status = 'running') AS runs "
                "FROM job_events WHERE event IN ('job_running', 'job_pending') "
                "AND job_id LIKE :p GROUP BY job_id, attempt "
                "HAVING count(*) FILTER (WHERE event = 'job_running') "
                "  - count(*) FILTER (WHERE event = 'job_pending' "
                "    AND previous_status = 'running') > 1"
            ),
            {"p": f"{prefix}%"},
        ).all()
        # attempt n+1 started before attempt n ended (or attempt n never ended)
        overlaps = conn.execute(
            sa.text(
                "WITH runs AS (SELECT r.job_id, r.attempt, r.at AS started, "
                "(SELECT min(e.at) FROM job_events e WHERE e.job_id = r.job_id "
                " AND e.attempt = r.attempt AND e.event = ANY(:ends)) AS ended "
                " FROM job_events r WHERE r.event = 'job_running' AND r.job_id LIKE :p) "
                "SELECT a.job_id, a.attempt, b.attempt FROM runs a JOIN runs b "
                "ON a.job_id = b.job_id AND b.attempt > a.attempt "
                "WHERE a.ended IS NULL OR b.started < a.ended"
            ),
            {"p": f"{prefix}%", "ends": list(END_EVENTS)},
        ).all()
        retried = conn.execute(
            sa.text(
                "SELECT job_id, attempt, coalesce(data->>'result', ''), message FROM job_events "
                "WHERE event IN ('job_retrying', 'job_failed') AND job_id LIKE :p"
            ),
            {"p": f"{prefix}%"},
        ).all()
        pool = conn.execute(sa.text("SELECT cpu_used, memory_used FROM resource_pool")).one()
        leases = conn.execute(sa.text("SELECT count(*) FROM leases")).scalar_one()
        attempts = conn.execute(
            sa.text("SELECT max(attempts), count(*) FILTER (WHERE attempts > 1) FROM jobs")
        ).one()

    assert statuses == {"completed": expected}, f"statuses {statuses}"
    assert not twice, f"attempts that ran more than once: {twice[:10]}"
    assert not overlaps, f"overlapping attempts (job, attempt, later attempt): {overlaps[:10]}"
    not_lost = [r for r in retried if r[2] != "worker_lost"]
    if lost_attempts_allowed:
        assert not not_lost, f"attempts that failed other than by a lost worker: {not_lost[:10]}"
    else:
        assert not retried, f"attempts spent by the fault: {retried[:10]}"
    assert tuple(pool) == (0, 0), f"tokens in use after the run: {tuple(pool)}"
    assert leases == 0, f"{leases} leases left"
    return {
        "jobs": expected,
        "attempts_lost_to_faults": len(retried),
        "max_attempts_of_a_job": attempts[0],
    }


def print_figures(name: str, figures: Mapping[str, Any]) -> None:
    text = ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\nCHAOS FIGURES {name}: {text}")


def log_excerpt(text: str, pattern: str, lines: int = 8) -> str:
    """The last `lines` lines of `text` that match `pattern`."""
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    return "\n".join(found[-lines:])


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    started = time.monotonic()
    try:
        yield box
    finally:
        box["seconds"] = time.monotonic() - started
