"""Metrics (issue 11): the cost of one /metrics scrape as the jobs table grows from 10
thousand to 1 million rows.

One database per size (dropped and recreated, migrated with alembic), filled with psycopg
COPY by the admission benchmark's loader (bench/admission.py): `--pending` ready jobs and
the rest finished history. Then, round-robin over the sizes, `--runs` times each:

- scrape: what GET /metrics renders (api/routes/metrics.py): the shared-state collector
  reading PostgreSQL plus this process's counters, rendered to the text format;
- for contrast, a count(*) of every row by status (what GET /stats did before it counted
  finished jobs within a time budget);
- GET /stats's counts by status (`stats.count_by_status`): unfinished jobs counted, each
  finished status counted while its 250 ms budget lasts, else estimated (which are named).

Reports medians and the ratio of the largest size to the smallest (the scrape must not
grow with the table).

    .venv/bin/python bench/metrics_scrape.py [--sizes 10000 1000000] [--runs 30]

All traffic goes to 127.0.0.1; the databases are dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from prometheus_client import generate_latest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.routes.metrics import _SharedStateCollector  # noqa: E402
from bench import admission as loader  # noqa: E402
from queue_service import metrics  # noqa: E402
from queue_service.repository import stats as stats_repo  # noqa: E402
from queue_service.settings import Settings  # noqa: E402

FULL_COUNT = "SELECT status, count(*) FROM jobs GROUP BY status"

# Databases of their own, so this never touches the admission benchmark's.
loader.PREFIX = "taskq_scrapebench"


def timed(work: Any, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def run(sizes: list[int], pending: int, runs: int, keep: bool) -> dict[str, Any]:
    settings = Settings()
    engines: dict[int, sa.Engine] = {}
    results: dict[int, dict[str, Any]] = {}
    try:
        for size in sizes:
            loader.create_database(size)
            results[size] = {"rows": size, **loader.fill(size, pending, 60.0)}
            engines[size] = sa.create_engine(loader.sa_url(size), pool_size=2)
        scrape: dict[int, list[float]] = {s: [] for s in sizes}
        counts: dict[int, list[float]] = {s: [] for s in sizes}
        stats_counts: dict[int, list[float]] = {s: [] for s in sizes}
        for _ in range(3):  # rounds, so that load from other processes hits sizes alike
            for size in sizes:
                state = SimpleNamespace(settings=settings, engine=engines[size])
                registry = metrics.registry_for_scrape(None, _SharedStateCollector(state))  # type: ignore[arg-type]
                scrape[size].append(timed(lambda r=registry: generate_latest(r), runs))

                def count(engine: sa.Engine = engines[size]) -> None:
                    with engine.connect() as conn:
                        conn.execute(sa.text(FULL_COUNT)).all()

                counts[size].append(timed(count, max(runs // 10, 3)))

                def stats_count(engine: sa.Engine = engines[size], size: int = size) -> None:
                    with engine.connect() as conn:
                        estimated = stats_repo.count_by_status(conn).estimated
                    results[size]["stats_estimated"] = estimated

                stats_counts[size].append(timed(stats_count, max(runs // 10, 3)))
        for size in sizes:
            results[size]["scrape_ms"] = round(statistics.median(scrape[size]), 2)
            results[size]["count_by_status_ms"] = round(statistics.median(counts[size]), 1)
            results[size]["stats_count_ms"] = round(statistics.median(stats_counts[size]), 1)
    finally:
        for engine in engines.values():
            engine.dispose()
        if not keep:
            for size in sizes:
                loader.drop_database(size)
    small, large = results[min(sizes)], results[max(sizes)]
    return {
        "sizes": results,
        "scrape_ratio_largest_to_smallest": round(large["scrape_ms"] / small["scrape_ms"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--pending", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.sizes, args.pending, args.runs, args.keep), indent=1))


if __name__ == "__main__":
    main()
