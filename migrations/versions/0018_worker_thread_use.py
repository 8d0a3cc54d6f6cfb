"""each worker process reports its threads and how many run a job's handler

With claim on delivery and a prefetch of four messages per thread, `running` counts the
attempts a process claimed, some of which wait there for a thread. The heartbeat now also
writes the process's thread count and how many of its threads were running a handler when
it beat, so the console and GET /workers tell the two apart.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: the scheduler runs no handlers, and a row written before this revision
    # has neither until its next heartbeat.
    op.add_column("worker_processes", sa.Column("threads", sa.Integer))
    op.add_column("worker_processes", sa.Column("busy_threads", sa.Integer))


def downgrade() -> None:
    op.drop_column("worker_processes", "busy_threads")
    op.drop_column("worker_processes", "threads")
