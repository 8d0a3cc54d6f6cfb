"""The benchmark's no-op job type for ours: a plain sync function, as the baselines' no-op
actor (bench/noop_dramatiq.py) and task (bench/noop_celery.py) are, registered the way a
user registers a handler of their own (SPEC "Job handlers of your own"): bench/compare.py
starts our api and workers with this module in TASKQ_JOB_MODULES.

The simulated `noop` type (queue_service/simulated_jobs.py) is async, as SPEC has every
simulated type sleep with `asyncio.sleep`, so each of its attempts passes through the
worker thread's event loop; `bench/compare.py --job-type noop` measures that one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from queue_service.job_context import JobContext
from queue_service.job_types import job_type

JOB_TYPE = "bench_noop"


@job_type(JOB_TYPE, description="does nothing (a sync handler)")
def bench_noop(payload: Mapping[str, Any], ctx: JobContext) -> None:
    return None
