"""Counting finished no-op tasks inside the baseline workers of bench/compare.py.

Plain Dramatiq and Celery keep no record of a finished message that the benchmark could
read, so their no-op task calls `record()`: each worker process counts its completions
and, every 50 ms while the count moves, writes `{count, first, last}` (wall-clock seconds)
to `$BENCH_COUNT_DIR/<pid>.json`. The benchmark sums the files to see the drain end.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

FLUSH_SECONDS = 0.05


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = 0
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def record(self) -> None:
        now = time.time()
        with self.lock:
            if self.pid != os.getpid():  # first task in this (possibly forked) process
                self.pid, self.count, self.first = os.getpid(), 0, now
                threading.Thread(target=self._flush_forever, daemon=True).start()
            self.count += 1
            self.last = now

    def _flush_forever(self) -> None:
        directory = Path(os.environ.get("BENCH_COUNT_DIR", "."))
        target = directory / f"{os.getpid()}.json"
        written = -1
        while True:
            with self.lock:
                snapshot = {"count": self.count, "first": self.first, "last": self.last}
            if snapshot["count"] != written:
                partial = target.with_suffix(".tmp")
                partial.write_text(json.dumps(snapshot))
                partial.replace(target)
                written = int(snapshot["count"])
            time.sleep(FLUSH_SECONDS)


_COUNTER = _Counter()


def record() -> None:
    """Count one finished task in this process."""
    _COUNTER.record()


def read_counts(directory: Path) -> tuple[int, float, float]:
    """(finished tasks, first finish, last finish) summed over every worker process."""
    count, first, last = 0, 0.0, 0.0
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while we read it: the next poll sees it
        count += int(data["count"])
        first = min(first or data["first"], data["first"])
        last = max(last, data["last"])
    return count, first, last
