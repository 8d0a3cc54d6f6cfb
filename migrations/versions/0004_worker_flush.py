"""worker flush as one statement: claims, completions, dependents, events, tokens, admission

`taskq_worker_flush(...)` applies one flush of a worker process's writer (actors/writer.py)
in a single call: the claims (pending -> running for exactly these attempts, leases
started), the succeeded attempts (running -> completed with their results), their
dependents (blocked -> pending or scheduled when the last parent completes), the job
events of all three (one INSERT, so one NOTIFY batch), the leases of the ended attempts
deleted and their tokens given back, and admission (`taskq_admit`). Run alone in
autocommit, a flush is one round trip and one durable commit. Attempts that did not
succeed (retries, failures, cancels) keep their Python path (queue_service.lifecycle,
with the retry decision) in the same transaction, before this call.

The SQL repeats, statement for statement, what the Python path does for a success
(`jobs_repo.claim_attempts`, `record_outcomes`, `unblock_dependents`, `release_leases`):
tests/integration/test_worker_flush.py holds the two to the same rows and events.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Rows come back tagged by kind: 'claimed' (the attempt's row for the actor),
# 'completed' (the succeeded attempts that were still running) and 'admitted'.
FLUSH_FUNCTION = """
CREATE FUNCTION taskq_worker_flush(
    p_now timestamptz,
    p_worker text,
    p_lease_ttl_seconds float8,
    p_aging_seconds float8,
    p_window int,
    p_starvation_seconds float8,
    p_claim_jobs text[],
    p_claim_attempts int[],
    p_claim_redelivered boolean[],
    p_done_jobs text[],
    p_done_attempts int[],
    p_done_results text[],
    p_release_jobs text[],
    p_release_attempts int[]
) RETURNS TABLE (
    kind text, job_id text, attempt int, job_type text, payload jsonb,
    timeout_seconds float8, priority text, created_at timestamptz, pending_since timestamptz
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  v_ids text[];
  v_attempts int[];
  v_cpu int[];
  v_memory int[];
BEGIN
  -- 1. The running rows of the ended attempts, locked in id order in a statement of their
  -- own. A submission adding a dependent to one of them holds it FOR SHARE until it
  -- commits; the next statement's snapshot is taken after this lock, so it sees the new
  -- edge and counts the new dependent down (one statement would miss it: blocked forever).
  PERFORM 1
     FROM jobs j
     JOIN unnest(p_done_jobs, p_done_attempts) AS d(job_id, attempt) ON d.job_id = j.id
    WHERE j.status = 'running' AND j.attempts = d.attempt
    ORDER BY j.id
      FOR UPDATE OF j;

  -- 2. One statement: claims, completions, dependents and their events. Its parts touch
  -- disjoint rows (pending, running and blocked jobs); rows are locked in id order.
  RETURN QUERY
  WITH wanted AS (
    -- Two deliveries of one attempt in one flush: one row (the writer answers the first).
    SELECT w.job_id, w.attempt, bool_or(w.redelivered) AS redelivered
      FROM unnest(p_claim_jobs, p_claim_attempts, p_claim_redelivered)
        AS w(job_id, attempt, redelivered)
     GROUP BY w.job_id, w.attempt
  ), claim_targets AS (
    SELECT j.id, w.attempt, w.redelivered, l.granted_at
      FROM jobs j
      JOIN wanted w ON w.job_id = j.id
      JOIN leases l ON l.job_id = w.job_id AND l.attempt = w.attempt AND l.started_at IS NULL
     WHERE j.status = 'pending' AND j.attempts = w.attempt - 1
     ORDER BY j.id
       FOR UPDATE OF j
  ), claimed AS (
    UPDATE jobs j SET status = 'running', attempts = t.attempt, started_at = p_now,
           queued_at = t.granted_at, rank = NULL, pending_since = NULL
      FROM claim_targets t
     WHERE j.id = t.id AND j.status = 'pending' AND j.attempts = t.attempt - 1
    RETURNING j.id, j.attempts, j.type, j.payload, j.timeout_seconds, j.priority,
              j.created_at, t.granted_at, t.redelivered
  ), started AS (
    UPDATE leases l SET started_at = p_now, worker = p_worker,
           expires_at = p_now + p_lease_ttl_seconds * interval '1 second'
      FROM claimed c
     WHERE l.job_id = c.id AND l.attempt = c.attempts
  ), done AS (
    SELECT * FROM unnest(p_done_jobs, p_done_attempts, p_done_results)
      AS d(job_id, attempt, result)
  ), done_targets AS (
    SELECT j.id, d.result
      FROM jobs j JOIN done d ON d.job_id = j.id
     WHERE j.status = 'running' AND j.attempts = d.attempt
     ORDER BY j.id
       FOR UPDATE OF j
  ), completed AS (
    UPDATE jobs j SET status = 'completed', next_attempt_at = NULL, finished_at = p_now,
           cancel_reason = NULL, result = CAST(t.result AS jsonb)
      FROM done_targets t
     WHERE j.id = t.id
    RETURNING j.id, j.attempts
  ), dependents AS (
    SELECT dep.job_id, count(*) AS n
      FROM job_dependencies dep JOIN completed c ON dep.depends_on = c.id
     GROUP BY dep.job_id
  ), dependent_targets AS (
    SELECT j.id, dependents.n
      FROM jobs j JOIN dependents ON dependents.job_id = j.id
     WHERE j.status = 'blocked'
     ORDER BY j.id
       FOR UPDATE OF j
  ), unblocked AS (
    UPDATE jobs j SET remaining_deps = j.remaining_deps - t.n,
           status = CASE WHEN j.remaining_deps > t.n THEN 'blocked'
                         WHEN j.run_at > p_now THEN 'scheduled' ELSE 'pending' END,
           next_attempt_at = CASE WHEN j.remaining_deps = t.n AND j.run_at > p_now
                                  THEN j.run_at END,
           pending_since = CASE WHEN j.remaining_deps = t.n
                                 AND NOT coalesce(j.run_at > p_now, false) THEN p_now END,
           rank = CASE WHEN j.remaining_deps = t.n AND NOT coalesce(j.run_at > p_now, false)
                       THEN extract(epoch FROM p_now)
                            - (CASE j.priority WHEN 'low' THEN 0 WHEN 'normal' THEN 1
                                               WHEN 'high' THEN 2 WHEN 'critical' THEN 3 END)
                              * p_aging_seconds END
      FROM dependent_targets t
     WHERE j.id = t.id
    RETURNING j.id, j.attempts, j.status
  ), events AS (
    INSERT INTO job_events
      (job_id, at, level, event, attempt, status, previous_status, message, data)
    SELECT e.job_id, p_now, 'info', 'job_' || e.status, e.attempt, e.status,
           e.previous_status, e.message, e.data
      FROM (
        SELECT c.id AS job_id, c.attempts AS attempt, 'running' AS status,
               'pending' AS previous_status,
               format('attempt %s started on %s', c.attempts, p_worker) AS message,
               jsonb_build_object('worker', p_worker, 'redelivered', c.redelivered) AS data,
               1 AS part, c.id AS ord
          FROM claimed c
        UNION ALL
        SELECT c.id, c.attempts, 'completed', 'running',
               format('attempt %s succeeded', c.attempts),
               jsonb_build_object('result', 'succeeded', 'error', NULL), 2, c.id
          FROM completed c
        UNION ALL
        SELECT u.id, u.attempts, u.status, 'blocked', 'dependencies completed',
               '{}'::jsonb, 3, u.id
          FROM unblocked u
         WHERE u.status <> 'blocked'
      ) e
     ORDER BY e.part, e.ord
  )
  SELECT 'claimed', c.id, c.attempts, c.type, c.payload, c.timeout_seconds, c.priority,
         c.created_at, c.granted_at
    FROM claimed c
  UNION ALL
  SELECT 'completed', c.id, c.attempts, NULL::text, NULL::jsonb, NULL::float8, NULL::text,
         NULL::timestamptz, NULL::timestamptz
    FROM completed c;

  -- 3. The leases of the ended attempts (and any others the caller releases) go, their
  -- tokens come back, and admission runs: the pool row is locked from here to the commit.
  WITH released AS (
    DELETE FROM leases l
     USING unnest(coalesce(p_done_jobs, '{}') || coalesce(p_release_jobs, '{}'),
                  coalesce(p_done_attempts, '{}') || coalesce(p_release_attempts, '{}'))
           AS r(job_id, attempt)
     WHERE l.job_id = r.job_id AND (r.attempt IS NULL OR l.attempt = r.attempt)
    RETURNING l.job_id, l.attempt, l.cpu_units, l.memory_mb
  )
  SELECT array_agg(r.job_id), array_agg(r.attempt), array_agg(r.cpu_units),
         array_agg(r.memory_mb)
    INTO v_ids, v_attempts, v_cpu, v_memory
    FROM released r;
  IF v_ids IS NULL AND coalesce(cardinality(p_done_jobs), 0) = 0
     AND coalesce(cardinality(p_release_jobs), 0) = 0 THEN
    RETURN;  -- only claims: nothing ended, no tokens came back, nothing new to admit
  END IF;
  RETURN QUERY
  SELECT 'admitted', a.admitted_job_id, a.admitted_attempt, NULL::text, NULL::jsonb,
         NULL::float8, a.admitted_priority, NULL::timestamptz, NULL::timestamptz
    FROM taskq_admit(p_now, p_window, p_starvation_seconds, true,
                     coalesce(v_ids, '{}'), coalesce(v_attempts, '{}'),
                     coalesce(v_cpu, '{}'), coalesce(v_memory, '{}')) a;
END $$
"""


def upgrade() -> None:
    op.execute(FLUSH_FUNCTION)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION IF EXISTS taskq_worker_flush(timestamptz, text, float8, float8, int, "
        "float8, text[], int[], boolean[], text[], int[], text[], text[], int[])"
    )
