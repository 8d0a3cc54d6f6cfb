"""What the scale benchmarks (issue 8) share: a database and vhost of their own, the
product's processes started as scripts/run.sh starts them, latency summaries, and process
memory. Everything on 127.0.0.1."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_services import drop_database, recreate_database, reset_vhost  # noqa: E402

BIN = Path(sys.executable).parent
PG = "postgresql://postgres@127.0.0.1:5432"
AMQP = "amqp://guest:guest@127.0.0.1:5672"


def product_env(name: str, extra: Mapping[str, str] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """TASKQ_* settings for a product on database and vhost `name`."""
    return {
        "TASKQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        "TASKQ_BROKER_URL": f"{AMQP}/{name}",
        "TASKQ_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        **dict(extra),
    }


def fresh_services(name: str) -> dict[str, str]:
    """Drop and recreate database and vhost `name`, migrate (alembic, as setup.sh does)."""
    recreate_database(name)
    reset_vhost(name)
    env = product_env(name)
    subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    return env


def drop_services(name: str) -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        drop_database(conn, name)
    import httpx

    with httpx.Client(base_url="http://127.0.0.1:15672", auth=("guest", "guest")) as mq:
        mq.delete(f"/api/vhosts/{name}")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def latency_ms(seconds: list[float]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds, and the sample count."""
    return {
        "n": len(seconds),
        "p50": round(percentile(seconds, 0.5) * 1000, 2),
        "p99": round(percentile(seconds, 0.99) * 1000, 2),
        "max": round(max(seconds) * 1000, 2),
    }


def tree_rss(pid: int) -> dict[int, int]:
    """Resident bytes of a process and each of its descendants, by pid."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    rss: dict[int, int] = {}
    for process in processes:
        try:
            rss[process.pid] = process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return rss


def command_line() -> str:
    """The command that is running, as a reader would type it from the repository root."""
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])
