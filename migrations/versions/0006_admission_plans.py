"""admission plans that do not depend on fresh statistics

`taskq_admit` (migration 0002) read its candidates and re-locked its choice with plans
PostgreSQL picked from statistics. Right after a burst of submissions into a table whose
statistics predate it (autovacuum analyzes a minute later at best), the planner believed
few jobs were pending and chose, per call, a bitmap scan of every pending job with a sort
(the candidates) and a walk of `ix_jobs_status_type_created` over every pending job (the
re-lock): milliseconds per call, on every flush of every worker.

- The candidates are read in `ix_jobs_admission` order, never sorted: `enable_sort` is off
  (SET LOCAL, restored at once) while that one statement plans and runs. A function-level
  SET clause would be simpler and is wrong: it also reaches the plans of the triggers and
  foreign-key checks the function fires, which it made orders of magnitude slower.
- The re-lock of the chosen jobs reads them by primary key only, and keeps those still
  pending after the lock.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


_0002 = load_revision("0002_batched_worker_path.py")

OLD_RELOCK = """  SELECT array_agg(s.id) INTO v_still_pending
    FROM (SELECT j.id FROM jobs j
           WHERE j.id = ANY(v_ids) AND j.status = 'pending'
           ORDER BY j.id FOR SHARE) s;"""
OLD_CANDIDATES_START = """  FOR c IN
    SELECT j.id, j.cpu_units, j.memory_mb, j.pending_since, j.attempts"""
NEW_CANDIDATES_START = """  v_sort := current_setting('enable_sort');
  PERFORM set_config('enable_sort', 'off', true);
  FOR c IN
    SELECT j.id, j.cpu_units, j.memory_mb, j.pending_since, j.attempts"""
OLD_CANDIDATES_END = """  END LOOP;

  IF cardinality(v_ids) = 0 THEN"""
NEW_CANDIDATES_END = """  END LOOP;
  PERFORM set_config('enable_sort', v_sort, true);

  IF cardinality(v_ids) = 0 THEN"""
OLD_DECLARE = """  v_still_pending text[];"""
NEW_DECLARE = """  v_still_pending text[];
  v_sort text;"""
NEW_RELOCK = """  SELECT array_agg(s.id) FILTER (WHERE s.status = 'pending') INTO v_still_pending
    FROM (SELECT j.id, j.status FROM jobs j
           WHERE j.id = ANY(v_ids)
           ORDER BY j.id FOR SHARE) s;"""


def admit_function() -> str:
    body: str = _0002.ADMIT_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    for old, new in (
        (OLD_DECLARE, NEW_DECLARE),
        (OLD_CANDIDATES_START, NEW_CANDIDATES_START),
        (OLD_CANDIDATES_END, NEW_CANDIDATES_END),
        (OLD_RELOCK, NEW_RELOCK),
    ):
        if body.count(old) != 1:
            raise RuntimeError("migration 0002's taskq_admit is not the one this one edits")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    op.execute(admit_function())


def downgrade() -> None:
    op.execute(_0002.ADMIT_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
