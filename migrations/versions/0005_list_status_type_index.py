"""ix_jobs_status_type_created: GET /jobs filtered by status and type together

With only (status, created_at, id) and (type, created_at, id), a page filtered by both
walks one of them newest first and drops the rows of the other value; when the
combination is rare or empty (failed noop jobs, completed invalid_operation jobs) it reads
every row of the smaller index to prove it. Measured at 10 million rows
(bench/large_table.py; bench/results/scale.md, bench/results/large_table_index.txt):
`status=failed&type=noop`, an empty page, took 2.8-5.0 s in the server (271,011 rows read
and dropped, ~175,000 buffers from disk) and 3.4 s p50 over HTTP; with this index 0.2-0.4
ms (4 buffers). The index costs 809 MB at 10 million rows and one more index entry per
status change (status is indexed already, so those updates were never HOT).

Building it takes a lock that blocks writes to `jobs` while it runs (2 min 50 s for 10
million rows here under load); on a live table create it by hand first with
`CREATE INDEX CONCURRENTLY` under the same name and definition.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_status_type_created",
        "jobs",
        ["status", "type", "created_at", "id"],
        unique=False,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_status_type_created", table_name="jobs")
