"""the worker flush and admission read every table by index, never by a sequential scan

Both functions run on generic plans (migration 0009), which a backend makes once and keeps
until the tables' statistics change. `leases` holds a few dozen live rows but is rewritten
on every admission, claim and end, so between two vacuums it carries pages of dead rows.
A plan made while it looked small (one page) joins it by a sequential scan, and keeps
doing so while it grows: in a 20,000-job drain the release of the ended leases read 161
pages per flush (0.47 ms) to delete about eight rows, and the claim sorted the whole table
to merge it with the claimed attempts.

Every statement of both functions has an index path for each table it reads (primary keys,
`ix_jobs_admission`, `ix_job_dependencies_depends_on`), so the functions run with
`enable_seqscan = off`: the planner takes those paths whatever size the table had when the
plan was made. Measured on three alternated 2 x 8 drains (bench/compare.py, ours only):
PostgreSQL CPU per job lower in each (0.53 -> 0.47, 0.66 -> 0.53, 0.63 -> 0.59 ms); the
release 0.47 -> 0.13 ms per flush (pg_stat_statements).

Like `plan_cache_mode`, the setting is dropped by a later `CREATE OR REPLACE FUNCTION` of
either function: such a migration must set it again (tests/migrations checks both).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

SIGNATURES = (
    "taskq_worker_flush(timestamptz, text, float8, float8, int, float8, jsonb)",
    "taskq_admit(timestamptz, int, float8, boolean, text[], int[], int[], int[])",
)


def upgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"ALTER FUNCTION {signature} SET enable_seqscan = off")


def downgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"ALTER FUNCTION {signature} RESET enable_seqscan")
