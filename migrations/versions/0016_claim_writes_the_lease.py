"""the worker's claim writes only the lease; the jobs row is written once, at the attempt's end

A claim used to move the job pending -> running on the wide `jobs` row: a row lock, a new
row version and five index insertions (status is in two indexes, so never a HOT update),
then the end of the attempt wrote the row again. Now the claim starts the attempt's lease
(one narrow row, no indexed column changed: a HOT update) and the job is running while its
lease is started: `jobs.status` stays `pending` until the end of the attempt records the
outcome, the attempt number, the start and queue times together. Readers show the running
status from the lease (repository/jobs.py `JOB_STATUS`); a Python path that changes a
running job first writes the claim's half onto the row (`transitions.record_running`).

Measured (bench/compare.py, ours only, alternated against the previous revision, 20,000
no-op jobs): PostgreSQL CPU per job 0.45 -> 0.37 ms at 1 x 8 and 0.38 -> 0.33 ms at
2 x 8; drains 9-21 % faster at 1 x 8, 4-5 % at 2 x 8.

The claim's guard is the lease row: `UPDATE leases ... WHERE started_at IS NULL`, which
PostgreSQL re-checks after a concurrent claim of the same attempt commits (one of two
racing workers gets the row). A cancel locks the job's lease before deciding whether the
job is waiting or running, so a claim in flight either commits first (the cancel then
asks the handler to stop) or finds the lease gone.

The transition trigger allows the one stored change this adds, pending -> completed, only
for a job whose lease for that attempt has started: the claim and the success of one
attempt recorded together.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


_0014 = load_revision("0014_leaner_flush_no_event_fk.py")
_0015 = load_revision("0015_flush_reads_by_index.py")

EDITS = (
    (  # the claim: the lease starts; the job row is read, not written
        """  ), claim_targets AS (
    SELECT j.id, j.status, j.attempts AS previous_attempts, w.attempt, w.redelivered,
           l.granted_at
      FROM jobs j
      JOIN wanted w ON w.job_id = j.id
      JOIN leases l ON l.job_id = w.job_id AND l.attempt = w.attempt AND l.started_at IS NULL
     ORDER BY j.id
       FOR UPDATE OF j
  ), claimed AS (
    UPDATE jobs j SET status = 'running', attempts = t.attempt, started_at = p_now,
           queued_at = t.granted_at, rank = NULL, pending_since = NULL
      FROM claim_targets t
     WHERE j.id = t.id AND t.status = 'pending' AND t.previous_attempts = t.attempt - 1
    RETURNING j.id, j.attempts, j.type, j.payload, j.timeout_seconds, j.priority,
              j.created_at, t.granted_at, t.redelivered
  ), started AS (
    UPDATE leases l SET started_at = p_now, worker = p_worker,
           expires_at = p_now + p_lease_ttl_seconds * interval '1 second'
      FROM claimed c
     WHERE l.job_id = c.id AND l.attempt = c.attempts
  ), done AS (""",
        """  ), claimed AS (
    -- The unstarted lease is the guard: re-checked after a racing claim of the same
    -- attempt commits, so one of them gets the row.
    UPDATE leases l SET started_at = p_now, worker = p_worker,
           expires_at = p_now + p_lease_ttl_seconds * interval '1 second'
      FROM wanted w, jobs j
     WHERE l.job_id = w.job_id AND l.attempt = w.attempt AND l.started_at IS NULL
       AND j.id = w.job_id AND j.status = 'pending' AND j.attempts = w.attempt - 1
    RETURNING j.id, l.attempt AS attempts, j.type, j.payload, j.timeout_seconds, j.priority,
              j.created_at, l.granted_at, w.redelivered
  ), done AS (""",
    ),
    (  # the end: running on the lease alone (pending) or written by a Python path (running)
        """  ), done_targets AS (
    SELECT j.id, j.status, j.attempts, d.attempt, d.result, d.started
      FROM jobs j JOIN done d ON d.job_id = j.id
     ORDER BY j.id
       FOR UPDATE OF j
  ), completed AS (
    UPDATE jobs j SET status = 'completed', next_attempt_at = NULL, finished_at = p_now,
           cancel_reason = NULL, result = CAST(t.result AS jsonb),
           started_at = coalesce(t.started, j.started_at)
      FROM done_targets t
     WHERE j.id = t.id AND t.status = 'running' AND t.attempts = t.attempt
    RETURNING j.id, j.attempts""",
        """  ), done_targets AS (
    SELECT j.id, j.status, j.attempts, d.attempt, d.result, d.started, l.started_at,
           l.granted_at
      FROM jobs j
      JOIN done d ON d.job_id = j.id
      JOIN leases l ON l.job_id = d.job_id AND l.attempt = d.attempt
                   AND l.started_at IS NOT NULL
     ORDER BY j.id
       FOR UPDATE OF j
  ), completed AS (
    UPDATE jobs j SET status = 'completed', next_attempt_at = NULL, finished_at = p_now,
           cancel_reason = NULL, result = CAST(t.result AS jsonb), attempts = t.attempt,
           started_at = coalesce(t.started, t.started_at),
           queued_at = t.granted_at, rank = NULL, pending_since = NULL
      FROM done_targets t
     WHERE j.id = t.id
       AND (t.status = 'pending' AND t.attempts = t.attempt - 1
            OR t.status = 'running' AND t.attempts = t.attempt)
    RETURNING j.id, j.attempts""",
    ),
)


def flush_function() -> str:
    body: str = _0014.flush_function()
    for old, new in EDITS:
        if body.count(old) != 1:
            raise RuntimeError("migration 0014's taskq_worker_flush is not the one this one edits")
        body = body.replace(old, new)
    return body


def _check_transition(pending_to_completed: bool) -> str:
    exception = (
        """
          -- The claim wrote only the lease: the attempt's claim and its success are one
          -- stored change, allowed for the attempt whose lease has started.
          IF OLD.status = 'pending' AND NEW.status = 'completed' AND EXISTS (
               SELECT 1 FROM leases l WHERE l.job_id = NEW.id AND l.attempt = NEW.attempts
                                        AND l.started_at IS NOT NULL) THEN
            RETURN NEW;
          END IF;"""
        if pending_to_completed
        else ""
    )
    return f"""
        CREATE OR REPLACE FUNCTION taskq_check_transition() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN{exception}
          IF NOT taskq_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'job % cannot move from % to %', OLD.id, OLD.status, NEW.status
              USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition';
          END IF;
          RETURN NEW;
        END
        $$
        """


def _set_function_settings() -> None:
    # CREATE OR REPLACE drops the function's settings (migrations 0009 and 0015).
    (signature, _) = _0015.SIGNATURES
    op.execute(f"ALTER FUNCTION {signature} SET plan_cache_mode = force_generic_plan")
    op.execute(f"ALTER FUNCTION {signature} SET enable_seqscan = off")


def upgrade() -> None:
    op.execute(flush_function())
    _set_function_settings()
    op.execute(_check_transition(pending_to_completed=True))


def downgrade() -> None:
    # Attempts running on their lease alone get the claim's half of the row first.
    op.execute(
        "UPDATE jobs j SET status = 'running', attempts = l.attempt, started_at = l.started_at, "
        "queued_at = l.granted_at, rank = NULL, pending_since = NULL FROM leases l "
        "WHERE l.job_id = j.id AND l.started_at IS NOT NULL AND j.status = 'pending' "
        "AND j.attempts = l.attempt - 1"
    )
    op.execute(_check_transition(pending_to_completed=False))
    op.execute(_0014.flush_function())
    _set_function_settings()
