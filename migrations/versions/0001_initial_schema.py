"""jobs, dependencies, events, resource pool, leases, dead letters

Revision ID: 0001
Revises:
Create Date: 2026-11-23 10:55:36.446990
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE FUNCTION taskq_notify_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('job_events', json_build_object(
    'event', NEW.event, 'job_id', NEW.job_id, 'status', NEW.status,
    'previous_status', NEW.previous_status, 'attempt', NEW.attempt,
    'at', NEW.at, 'type', (SELECT type FROM jobs WHERE id = NEW.job_id)
  )::text);
  RETURN NEW;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cpu_units", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("backoff_multiplier", sa.Float(), nullable=False),
        sa.Column("initial_delay_seconds", sa.Float(), nullable=False),
        sa.Column("max_delay_seconds", sa.Float(), nullable=False),
        sa.Column("timeout_seconds", sa.Float(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("remaining_deps", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rank", sa.Float(), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "(status = 'pending') = (rank IS NOT NULL AND pending_since IS NOT NULL)",
            name="ck_jobs_pending_has_rank",
        ),
        sa.CheckConstraint(
            "(status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL)",
            name="ck_jobs_finished_at",
        ),
        sa.CheckConstraint(
            "priority IN ('critical', 'high', 'normal', 'low')", name="ck_jobs_priority"
        ),
        sa.CheckConstraint(
            "status <> 'blocked' OR remaining_deps > 0", name="ck_jobs_blocked_deps"
        ),
        sa.CheckConstraint(
            "status IN ('blocked', 'scheduled', 'pending', 'running', 'retrying', 'completed', 'failed', 'cancelled')",
            name="ck_jobs_status",
        ),
        sa.CheckConstraint(
            "status NOT IN ('scheduled', 'retrying') OR next_attempt_at IS NOT NULL",
            name="ck_jobs_waiting_has_due_time",
        ),
        sa.CheckConstraint(
            "attempts >= 0 AND attempts <= max_attempts", name="ck_jobs_attempts"
        ),
        sa.CheckConstraint(
            "cpu_units >= 1 AND memory_mb >= 1", name="ck_jobs_resources"
        ),
        sa.CheckConstraint(
            "max_attempts BETWEEN 1 AND 100", name="ck_jobs_max_attempts"
        ),
        sa.CheckConstraint("remaining_deps >= 0", name="ck_jobs_remaining_deps"),
        sa.CheckConstraint("timeout_seconds > 0", name="ck_jobs_timeout"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("seq"),
    )
    op.create_index(
        "ix_jobs_admission",
        "jobs",
        ["rank", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending' AND queued_at IS NULL"),
    )
    op.create_index(
        "ix_jobs_finished",
        "jobs",
        ["finished_at"],
        unique=False,
        postgresql_where=sa.text("finished_at IS NOT NULL"),
    )
    op.create_index("ix_jobs_created", "jobs", ["created_at", "id"], unique=False)
    op.create_index(
        "ix_jobs_due",
        "jobs",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status IN ('scheduled', 'retrying')"),
    )
    op.create_index(
        "ix_jobs_status_created", "jobs", ["status", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_jobs_type_created", "jobs", ["type", "created_at", "id"], unique=False
    )
    op.create_index(
        "uq_jobs_idempotency_key",
        "jobs",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "resource_pool",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("cpu_capacity", sa.Integer(), nullable=False),
        sa.Column("memory_capacity", sa.Integer(), nullable=False),
        sa.Column("cpu_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column("memory_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "paused", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.CheckConstraint(
            "cpu_used BETWEEN 0 AND cpu_capacity", name="ck_resource_pool_cpu"
        ),
        sa.CheckConstraint("id = 1", name="ck_resource_pool_singleton"),
        sa.CheckConstraint(
            "memory_used BETWEEN 0 AND memory_capacity", name="ck_resource_pool_memory"
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("died_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(resolved_at IS NULL) = (resolution IS NULL)",
            name="ck_dead_letters_resolution",
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_job", "dead_letters", ["job_id"], unique=False)
    op.create_index(
        "ix_dead_letters_open",
        "dead_letters",
        ["id"],
        unique=False,
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("depends_on", sa.Text(), nullable=False),
        sa.CheckConstraint("job_id <> depends_on", name="ck_job_dependencies_not_self"),
        sa.ForeignKeyConstraint(["depends_on"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "depends_on"),
    )
    op.create_index(
        "ix_job_dependencies_depends_on",
        "job_dependencies",
        ["depends_on", "job_id"],
        unique=False,
    )
    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("previous_status", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_job_events_job", "job_events", ["job_id", "id"], unique=False)
    op.create_table(
        "leases",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("cpu_units", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "(started_at IS NULL) = (expires_at IS NULL)", name="ck_leases_started"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id"),
    )

    # The single pool row; processes set its capacity from settings at start-up.
    op.execute(
        "INSERT INTO resource_pool (id, cpu_capacity, memory_capacity) VALUES (1, 8, 4096)"
    )
    # Every recorded status change is announced to the API's live stream (LISTEN job_events).
    # NOTIFY is transactional: listeners hear only what committed.
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
        "FOR EACH ROW WHEN (NEW.status IS NOT NULL) EXECUTE FUNCTION taskq_notify_job_event()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
    op.execute("DROP FUNCTION IF EXISTS taskq_notify_job_event()")
    op.drop_table("leases")
    op.drop_index("ix_job_events_job", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("ix_job_dependencies_depends_on", table_name="job_dependencies")
    op.drop_table("job_dependencies")
    op.drop_index(
        "ix_dead_letters_open",
        table_name="dead_letters",
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.drop_index("ix_dead_letters_job", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_table("resource_pool")
    op.drop_index(
        "uq_jobs_idempotency_key",
        table_name="jobs",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index("ix_jobs_type_created", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_index(
        "ix_jobs_due",
        table_name="jobs",
        postgresql_where=sa.text("status IN ('scheduled', 'retrying')"),
    )
    op.drop_index("ix_jobs_created", table_name="jobs")
    op.drop_index(
        "ix_jobs_admission",
        table_name="jobs",
        postgresql_where=sa.text("status = 'pending' AND queued_at IS NULL"),
    )
    op.drop_table("jobs")
