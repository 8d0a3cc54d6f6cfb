"""an attempt's started_at is when its handler started

A worker claims each job message as it is delivered (`TASKQ_CLAIM_ON_DELIVERY`), so a
claimed attempt may wait in its process for a free thread: the claim's time is when the
worker took the attempt, not when it began to run. The worker now reports the handler's
start with the attempt's end, and the end sets `jobs.started_at` to it (the claim's time
stays where none is reported: an attempt given back, or one maintenance ends).

`taskq_worker_flush` gains `p_done_started` (one start per succeeded attempt). A new
argument list is a new function in PostgreSQL, so the old one is dropped, and the new one
gets migration 0009's `plan_cache_mode` again.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


_0007 = load_revision("0007_flush_plans.py")

OLD_ARGUMENTS = (
    "timestamptz, text, float8, float8, int, float8, text[], int[], boolean[], "
    "text[], int[], text[], text[], int[]"
)
NEW_ARGUMENTS = (
    "timestamptz, text, float8, float8, int, float8, text[], int[], boolean[], "
    "text[], int[], text[], timestamptz[], text[], int[]"
)

EDITS = (
    (
        """    p_done_results text[],
""",
        """    p_done_results text[],
    p_done_started timestamptz[],
""",
    ),
    (
        """    SELECT * FROM unnest(p_done_jobs, p_done_attempts, p_done_results)
      AS d(job_id, attempt, result)""",
        """    SELECT * FROM unnest(p_done_jobs, p_done_attempts, p_done_results, p_done_started)
      AS d(job_id, attempt, result, started)""",
    ),
    (
        """    SELECT j.id, j.status, j.attempts, d.attempt, d.result
      FROM jobs j JOIN done d ON d.job_id = j.id""",
        """    SELECT j.id, j.status, j.attempts, d.attempt, d.result, d.started
      FROM jobs j JOIN done d ON d.job_id = j.id""",
    ),
    (
        """           cancel_reason = NULL, result = CAST(t.result AS jsonb)
      FROM done_targets t""",
        """           cancel_reason = NULL, result = CAST(t.result AS jsonb),
           started_at = coalesce(t.started, j.started_at)
      FROM done_targets t""",
    ),
)


def flush_function() -> str:
    body: str = _0007.flush_function().replace(
        "CREATE OR REPLACE FUNCTION", "CREATE FUNCTION", 1
    )
    for old, new in EDITS:
        if body.count(old) != 1:
            raise RuntimeError("migration 0007's taskq_worker_flush is not the one this one edits")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    op.execute(f"DROP FUNCTION taskq_worker_flush({OLD_ARGUMENTS})")
    op.execute(flush_function())
    op.execute(
        f"ALTER FUNCTION taskq_worker_flush({NEW_ARGUMENTS}) "
        "SET plan_cache_mode = force_generic_plan"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION taskq_worker_flush({NEW_ARGUMENTS})")
    op.execute(_0007.flush_function().replace("CREATE OR REPLACE FUNCTION", "CREATE FUNCTION", 1))
    op.execute(
        f"ALTER FUNCTION taskq_worker_flush({OLD_ARGUMENTS}) "
        "SET plan_cache_mode = force_generic_plan"
    )
