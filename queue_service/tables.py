"""The PostgreSQL tables, as SQLAlchemy Core metadata.

Migrations create them (never `create_all`); `tests/migrations` checks that the migrated
schema and this metadata agree. ARCHITECTURE.md explains every table and index.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from queue_service.model import JobStatus, Priority

metadata = sa.MetaData()

_statuses = ", ".join(f"'{s.value}'" for s in JobStatus)
_priorities = ", ".join(f"'{p.value}'" for p in Priority)
_terminal = "('completed', 'failed', 'cancelled')"

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    # Submission order: the tie-breaker between equally ranked jobs (no index of its own:
    # only ix_jobs_admission orders by it).
    sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("priority", sa.Text, nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("cpu_units", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("backoff_multiplier", sa.Float, nullable=False),
    sa.Column("initial_delay_seconds", sa.Float, nullable=False),
    sa.Column("max_delay_seconds", sa.Float, nullable=False),
    sa.Column("timeout_seconds", sa.Float, nullable=False),
    sa.Column("run_at", sa.DateTime(timezone=True)),
    sa.Column("idempotency_key", sa.Text),
    # sha256 of the normalised submission: a repeated submission must match it.
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Dependencies not yet completed; the job becomes ready when this reaches 0.
    sa.Column("remaining_deps", sa.Integer, nullable=False, server_default="0"),
    # Admission order key, fixed when the job becomes pending (see admission.admission_rank).
    sa.Column("rank", sa.Float),
    sa.Column("pending_since", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # When admission granted the attempt's tokens; copied from the lease by the claim
    # (while a job waits for a worker, the lease's granted_at is the answer).
    sa.Column("queued_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("cancel_requested_at", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("cancel_reason", sa.Text),
    sa.Column("result", JSONB),
    sa.CheckConstraint(f"status IN ({_statuses})", name="ck_jobs_status"),
    sa.CheckConstraint(f"priority IN ({_priorities})", name="ck_jobs_priority"),
    sa.CheckConstraint("cpu_units >= 1 AND memory_mb >= 1", name="ck_jobs_resources"),
    sa.CheckConstraint("max_attempts BETWEEN 1 AND 100", name="ck_jobs_max_attempts"),
    sa.CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="ck_jobs_attempts"),
    sa.CheckConstraint("remaining_deps >= 0", name="ck_jobs_remaining_deps"),
    sa.CheckConstraint("timeout_seconds > 0", name="ck_jobs_timeout"),
    sa.CheckConstraint(
        "(status = 'pending') = (rank IS NOT NULL AND pending_since IS NOT NULL)",
        name="ck_jobs_pending_has_rank",
    ),
    sa.CheckConstraint(
        f"(status IN {_terminal}) = (finished_at IS NOT NULL)", name="ck_jobs_finished_at"
    ),
    sa.CheckConstraint(
        "status NOT IN ('scheduled', 'retrying') OR next_attempt_at IS NOT NULL",
        name="ck_jobs_waiting_has_due_time",
    ),
    sa.CheckConstraint("status <> 'blocked' OR remaining_deps > 0", name="ck_jobs_blocked_deps"),
)

# Admission reads the best-ranked ready jobs in index order, skipping the few that hold a
# lease (admitted, not yet claimed): admission writes only `leases`, never this row.
sa.Index(
    "ix_jobs_admission",
    jobs.c.rank,
    jobs.c.seq,
    postgresql_where=sa.text("status = 'pending'"),
)
# Maintenance promotes due scheduled and retrying jobs.
sa.Index(
    "ix_jobs_due",
    jobs.c.next_attempt_at,
    postgresql_where=sa.text("status IN ('scheduled', 'retrying')"),
)
# Throughput and timing percentiles over recently finished jobs (GET /stats, /metrics).
sa.Index(
    "ix_jobs_finished",
    jobs.c.finished_at,
    postgresql_where=sa.text("finished_at IS NOT NULL"),
)
# GET /jobs pages, newest first, optionally filtered by status or type.
sa.Index("ix_jobs_created", jobs.c.created_at, jobs.c.id)
sa.Index("ix_jobs_status_created", jobs.c.status, jobs.c.created_at, jobs.c.id)
sa.Index("ix_jobs_type_created", jobs.c.type, jobs.c.created_at, jobs.c.id)
# Filtered by status and type together: one index range even when the pair is rare or
# empty (each single-column index above would read every row of its value).
sa.Index("ix_jobs_status_type_created", jobs.c.status, jobs.c.type, jobs.c.created_at, jobs.c.id)
sa.Index(
    "uq_jobs_idempotency_key",
    jobs.c.idempotency_key,
    unique=True,
    postgresql_where=sa.text("idempotency_key IS NOT NULL"),
)

job_dependencies = sa.Table(
    "job_dependencies",
    metadata,
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column(
        "depends_on", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.CheckConstraint("job_id <> depends_on", name="ck_job_dependencies_not_self"),
)
# The other direction: a completing job finds its dependents.
sa.Index("ix_job_dependencies_depends_on", job_dependencies.c.depends_on, job_dependencies.c.job_id)

job_events = sa.Table(
    "job_events",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    # No foreign key (migration 0014): every event is written by a statement that has just
    # inserted or locked its job's row, and retention deletes a job's events with it.
    sa.Column("job_id", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("level", sa.Text, nullable=False),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.Text),
    sa.Column("previous_status", sa.Text),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", JSONB, nullable=False),
)
sa.Index("ix_job_events_job", job_events.c.job_id, job_events.c.id)

resource_pool = sa.Table(
    "resource_pool",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("cpu_capacity", sa.Integer, nullable=False),
    sa.Column("memory_capacity", sa.Integer, nullable=False),
    sa.Column("cpu_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("memory_used", sa.Integer, nullable=False, server_default="0"),
    sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
    # What the settings ask for; the capacity in force follows as soon as the tokens in
    # use allow it (taskq_admit applies it), so a lowered capacity is never skipped.
    sa.Column("cpu_capacity_configured", sa.Integer, nullable=False),
    sa.Column("memory_capacity_configured", sa.Integer, nullable=False),
    sa.CheckConstraint("id = 1", name="ck_resource_pool_singleton"),
    sa.CheckConstraint(
        "cpu_capacity_configured >= 1 AND memory_capacity_configured >= 1",
        name="ck_resource_pool_configured",
    ),
    sa.CheckConstraint("cpu_used BETWEEN 0 AND cpu_capacity", name="ck_resource_pool_cpu"),
    sa.CheckConstraint("memory_used BETWEEN 0 AND memory_capacity", name="ck_resource_pool_memory"),
)

leases = sa.Table(
    "leases",
    metadata,
    # One lease per job: the primary key makes a second grant impossible.
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("cpu_units", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    # Set when a worker claims the attempt; a lease past it belongs to a dead worker.
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("worker", sa.Text),
    sa.CheckConstraint("(started_at IS NULL) = (expires_at IS NULL)", name="ck_leases_started"),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("died_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("message", JSONB, nullable=False),
    # Set by replay or discard; a resolved dead letter is hidden from the list.
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolution", sa.Text),
    sa.CheckConstraint(
        "(resolved_at IS NULL) = (resolution IS NULL)", name="ck_dead_letters_resolution"
    ),
)
sa.Index(
    "ix_dead_letters_open",
    dead_letters.c.id,
    postgresql_where=sa.text("resolved_at IS NULL"),
)
sa.Index("ix_dead_letters_job", dead_letters.c.job_id)

# One row per live worker process, written by its heartbeat (actors/middleware/
# worker_heartbeat.py): the live-workers view and gauge read it, never the jobs table.
worker_processes = sa.Table(
    "worker_processes",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("metrics_port", sa.Integer),
    # The process's worker threads, and how many ran a job's handler at its last heartbeat
    # (migration 0018; null for the scheduler).
    sa.Column("threads", sa.Integer),
    sa.Column("busy_threads", sa.Integer),
)

# When the last maintenance pass ran (written by the pass holding the advisory lock, so
# one writer at a time): `taskq_maintenance_last_pass_age_seconds`.
maintenance_state = sa.Table(
    "maintenance_state",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("last_pass_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("id = 1", name="ck_maintenance_state_singleton"),
)
