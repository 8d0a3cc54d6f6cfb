"""Entry point of the scheduler: `periodiq actors.scheduler` (run with TZ=UTC).

periodiq enqueues the periodic actors declared in actors/maintenance.py; the workers
run them. Sub-minute duties (due retries, lease expiry) run in the workers' maintenance
ticker, because periodiq's resolution is one minute.
"""

from actors.app import setup

broker = setup("scheduler")
