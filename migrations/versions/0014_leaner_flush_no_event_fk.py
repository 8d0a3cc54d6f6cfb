"""job_events without a foreign key; the worker flush skips what an empty part needs not run

Two costs PostgreSQL paid on every flush, measured with the backend's CPU per job on one
connection (eight claims, then their eight ends with admission; five alternated rounds,
medians; the same machine):

- `job_events.job_id` referenced `jobs`: each event row (five per no-op job) ran a
  foreign-key check, a locking primary-key lookup through SPI. Without it: 429 -> 363 us
  per job (lower in each of the five rounds). Every event is written by a statement that
  has just inserted or locked its job's row, so the check could never fail; the one
  deletion of jobs (retention, `jobs.delete_finished_before`) now deletes their events in
  the same statement, which the cascade did before.
- A flush of claims only ran the lock of the ended rows and the release of their leases
  with empty arrays (two statements' executor start-up for nothing). They are skipped
  when there is nothing to lock or release: 429 -> 404 us per job (lower in each round).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


_0013 = load_revision("0013_flush_takes_one_json.py")

ARGUMENTS = _0013.NEW_ARGUMENTS

EDITS = (
    (
        """  PERFORM 1
     FROM jobs j
     JOIN unnest(p_done_jobs, p_done_attempts) AS d(job_id, attempt) ON d.job_id = j.id
    ORDER BY j.id
      FOR UPDATE OF j;
""",
        """  IF cardinality(p_done_jobs) > 0 THEN
    PERFORM 1
       FROM jobs j
       JOIN unnest(p_done_jobs, p_done_attempts) AS d(job_id, attempt) ON d.job_id = j.id
      ORDER BY j.id
        FOR UPDATE OF j;
  END IF;
""",
    ),
    (
        """  -- 3. The leases of the ended attempts""",
        """  IF cardinality(p_done_jobs) = 0 AND cardinality(p_release_jobs) = 0 THEN
    RETURN;  -- only claims: nothing ended, no tokens come back, nothing new to admit
  END IF;

  -- 3. The leases of the ended attempts""",
    ),
)


def flush_function() -> str:
    body: str = _0013.flush_function().replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )
    for old, new in EDITS:
        if body.count(old) != 1:
            raise RuntimeError("migration 0013's taskq_worker_flush is not the one this one edits")
        body = body.replace(old, new)
    return body


def _set_generic_plans() -> None:
    # CREATE OR REPLACE drops the function's settings (migration 0009).
    op.execute(
        f"ALTER FUNCTION taskq_worker_flush({ARGUMENTS}) SET plan_cache_mode = force_generic_plan"
    )


def upgrade() -> None:
    op.execute("ALTER TABLE job_events DROP CONSTRAINT job_events_job_id_fkey")
    op.execute(flush_function())
    _set_generic_plans()


def downgrade() -> None:
    op.execute(_0013.flush_function().replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    _set_generic_plans()
    op.execute("DELETE FROM job_events e WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = e.job_id)")
    op.execute(
        "ALTER TABLE job_events ADD CONSTRAINT job_events_job_id_fkey "
        "FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE"
    )
