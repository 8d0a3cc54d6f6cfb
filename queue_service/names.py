"""Every name that crosses the wire or the database's NOTIFY channel, in one place."""

JOBS_QUEUE = "taskq.jobs"
MAINTENANCE_QUEUE = "taskq.maintenance"
DEAD_LETTER_EXCHANGE = "taskq.dead-letter"
DEAD_LETTER_QUEUE = "taskq.dead-letters"
MAX_MESSAGE_PRIORITY = 10

RUN_JOB_ACTOR = "run_job"
MAINTENANCE_ACTOR = "maintenance_sweep"

JOB_EVENTS_CHANNEL = "job_events"
# pg_try_advisory_lock key: one maintenance pass at a time across every process.
MAINTENANCE_LOCK_KEY = 0x7A5C_0001
