"""batched worker path: admission as one SQL function, leases as the hot state,
one NOTIFY per statement

- `taskq_admit(...)` returns tokens, chooses the next jobs (priority rank, backfill,
  starvation reservation: the same rules as queue_service.admission.decide_admission),
  grants their leases and writes the token events, all in one statement, so the pool row
  is locked from that statement to the commit and never across a round trip to Python.
- Admission writes only `leases` and the pool row: a ready job is "admitted" while a lease
  row exists, so `ix_jobs_admission` no longer depends on `queued_at` and admission never
  rewrites the wide `jobs` row (the claim sets `queued_at` from the lease).
- The pool keeps the configured capacity beside the one in force; admission applies it as
  soon as the tokens in use allow, so lowering the capacity is never silently skipped.
- `seq` keeps its identity but loses its unique index: nothing looks a job up by it.
- job_events announce themselves with one trigger call per INSERT statement (a
  transition table), in chunks that fit NOTIFY's 8000-byte payload.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ADMIT_FUNCTION = """
CREATE FUNCTION taskq_admit(
    p_now timestamptz,
    p_window int,
    p_starvation_seconds float8,
    p_wait boolean,
    p_released_jobs text[],
    p_released_attempts int[],
    p_released_cpu int[],
    p_released_memory int[]
) RETURNS TABLE (admitted_job_id text, admitted_attempt int, admitted_priority text)
LANGUAGE plpgsql AS $$
DECLARE
  v_pool resource_pool%ROWTYPE;
  v_cpu_free int;
  v_memory_free int;
  v_ids text[] := '{}';
  v_attempts int[] := '{}';
  v_cpu int[] := '{}';
  v_memory int[] := '{}';
  v_still_pending text[];
  c record;
BEGIN
  -- Tokens being returned are returned whatever happens next: always wait for the pool.
  IF p_wait OR coalesce(cardinality(p_released_jobs), 0) > 0 THEN
    SELECT * INTO v_pool FROM resource_pool WHERE id = 1 FOR UPDATE;
  ELSE
    SELECT * INTO v_pool FROM resource_pool WHERE id = 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
      RETURN;  -- another transaction is admitting; it or the next one admits our jobs
    END IF;
  END IF;

  IF coalesce(cardinality(p_released_jobs), 0) > 0 THEN
    UPDATE resource_pool
       SET cpu_used = cpu_used - (SELECT sum(x) FROM unnest(p_released_cpu) x),
           memory_used = memory_used - (SELECT sum(x) FROM unnest(p_released_memory) x)
     WHERE id = 1
    RETURNING * INTO v_pool;
    -- Written under the pool lock: the order of token events is the order of pool changes.
    INSERT INTO job_events (job_id, at, level, event, attempt, message, data)
    SELECT r.j, p_now, 'info', 'tokens_released', r.a,
           format('returned %s CPU units and %s MB', r.c, r.m),
           jsonb_build_object('cpu_units', r.c, 'memory_mb', r.m)
      FROM unnest(p_released_jobs, p_released_attempts, p_released_cpu, p_released_memory)
           AS r(j, a, c, m);
  END IF;

  -- The configured capacity takes effect as soon as the tokens in use allow it (a lower
  -- capacity waits for running jobs to give theirs back; meanwhile nothing new starts).
  IF (v_pool.cpu_capacity, v_pool.memory_capacity)
     IS DISTINCT FROM (v_pool.cpu_capacity_configured, v_pool.memory_capacity_configured) THEN
    UPDATE resource_pool
       SET cpu_capacity = CASE WHEN cpu_used <= cpu_capacity_configured
                               THEN cpu_capacity_configured ELSE cpu_capacity END,
           memory_capacity = CASE WHEN memory_used <= memory_capacity_configured
                                  THEN memory_capacity_configured ELSE memory_capacity END
     WHERE id = 1
    RETURNING * INTO v_pool;
  END IF;

  IF v_pool.paused THEN
    RETURN;
  END IF;
  v_cpu_free := least(v_pool.cpu_capacity, v_pool.cpu_capacity_configured) - v_pool.cpu_used;
  v_memory_free := least(v_pool.memory_capacity, v_pool.memory_capacity_configured)
                   - v_pool.memory_used;

  -- The best-ranked ready jobs without a lease (ix_jobs_admission, in index order),
  -- read without locks; the chosen ones are re-checked under a lock below.
  FOR c IN
    SELECT j.id, j.cpu_units, j.memory_mb, j.pending_since, j.attempts
      FROM jobs j
     WHERE j.status = 'pending'
       AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.job_id = j.id)
     ORDER BY j.rank, j.seq
     LIMIT least(p_window, greatest(16, 4 * v_cpu_free))
  LOOP
    EXIT WHEN v_cpu_free <= 0 OR v_memory_free <= 0;
    IF c.cpu_units <= v_cpu_free AND c.memory_mb <= v_memory_free THEN
      v_ids := v_ids || c.id;
      v_attempts := v_attempts || (c.attempts + 1);
      v_cpu := v_cpu || c.cpu_units;
      v_memory := v_memory || c.memory_mb;
      v_cpu_free := v_cpu_free - c.cpu_units;
      v_memory_free := v_memory_free - c.memory_mb;
    ELSIF extract(epoch FROM p_now - c.pending_since) > p_starvation_seconds
          AND c.cpu_units <= v_pool.cpu_capacity
          AND c.memory_mb <= v_pool.memory_capacity THEN
      EXIT;  -- starved: its tokens are reserved, nothing behind it starts (no backfill)
    END IF;
  END LOOP;

  IF cardinality(v_ids) = 0 THEN
    RETURN;
  END IF;

  -- A job cancelled since the read drops out: share-lock the chosen rows (a cancel waits
  -- for this commit and then releases the lease) and keep those still pending.
  SELECT array_agg(s.id) INTO v_still_pending
    FROM (SELECT j.id FROM jobs j
           WHERE j.id = ANY(v_ids) AND j.status = 'pending'
           ORDER BY j.id FOR SHARE) s;

  RETURN QUERY
  WITH chosen AS (
    SELECT u.id, u.a, u.c, u.m, u.ord
      FROM unnest(v_ids, v_attempts, v_cpu, v_memory) WITH ORDINALITY AS u(id, a, c, m, ord)
     WHERE u.id = ANY(v_still_pending)
  ), granted AS (
    INSERT INTO leases (job_id, attempt, cpu_units, memory_mb, granted_at, published_at)
    SELECT chosen.id, chosen.a, chosen.c, chosen.m, p_now, p_now FROM chosen
    RETURNING leases.job_id, leases.attempt, leases.cpu_units, leases.memory_mb
  ), taken AS (
    UPDATE resource_pool
       SET cpu_used = cpu_used + (SELECT coalesce(sum(g.cpu_units), 0) FROM granted g),
           memory_used = memory_used + (SELECT coalesce(sum(g.memory_mb), 0) FROM granted g)
     WHERE id = 1
  ), granted_events AS (
    INSERT INTO job_events (job_id, at, level, event, attempt, message, data)
    SELECT g.job_id, p_now, 'info', 'tokens_granted', g.attempt,
           format('admitted with %s CPU units and %s MB', g.cpu_units, g.memory_mb),
           jsonb_build_object('cpu_units', g.cpu_units, 'memory_mb', g.memory_mb)
      FROM granted g
  )
  SELECT chosen.id, chosen.a, j.priority
    FROM chosen JOIN jobs j ON j.id = chosen.id
   ORDER BY chosen.ord;
END $$
"""

# Status changes and progress reach the API's stream; token events and log lines do not.
NOTIFY_FUNCTION = """
CREATE FUNCTION taskq_notify_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  chunk text;
BEGIN
  FOR chunk IN
    SELECT json_agg(json_build_object(
             'event', e.event, 'job_id', e.job_id, 'status', e.status,
             'previous_status', e.previous_status, 'attempt', e.attempt, 'at', e.at,
             'type', j.type,
             'data', CASE WHEN e.event = 'job_progress' THEN jsonb_build_object(
               'fraction', e.data -> 'fraction', 'message', left(e.data ->> 'message', 200)) END)
             ORDER BY e.id)::text
      FROM (SELECT n.*, (row_number() OVER (ORDER BY n.id) - 1) / 12 AS part
              FROM new_events n
             WHERE n.status IS NOT NULL OR n.event = 'job_progress') e
      JOIN jobs j ON j.id = e.job_id
     GROUP BY e.part
     ORDER BY e.part
  LOOP
    PERFORM pg_notify('job_events', chunk);
  END LOOP;
  RETURN NULL;
END $$
"""

OLD_NOTIFY_FUNCTION = """
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
    # What the settings ask for; cpu_capacity / memory_capacity follow it as soon as the
    # tokens in use allow (admission applies it), so a lowered capacity is never skipped.
    op.add_column("resource_pool", sa.Column("cpu_capacity_configured", sa.Integer()))
    op.add_column("resource_pool", sa.Column("memory_capacity_configured", sa.Integer()))
    op.execute(
        "UPDATE resource_pool SET cpu_capacity_configured = cpu_capacity, "
        "memory_capacity_configured = memory_capacity"
    )
    op.alter_column("resource_pool", "cpu_capacity_configured", nullable=False)
    op.alter_column("resource_pool", "memory_capacity_configured", nullable=False)
    op.create_check_constraint(
        "ck_resource_pool_configured",
        "resource_pool",
        "cpu_capacity_configured >= 1 AND memory_capacity_configured >= 1",
    )
    op.drop_constraint("jobs_seq_key", "jobs", type_="unique")
    op.drop_index(
        "ix_jobs_admission",
        table_name="jobs",
        postgresql_where=sa.text("status = 'pending' AND queued_at IS NULL"),
    )
    op.create_index(
        "ix_jobs_admission",
        "jobs",
        ["rank", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.execute(ADMIT_FUNCTION)
    op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
    op.execute("DROP FUNCTION IF EXISTS taskq_notify_job_event()")
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
        "REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskq_notify_job_events()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS job_events_notify ON job_events")
    op.execute("DROP FUNCTION IF EXISTS taskq_notify_job_events()")
    op.execute(OLD_NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
        "FOR EACH ROW WHEN (NEW.status IS NOT NULL) EXECUTE FUNCTION taskq_notify_job_event()"
    )
    op.execute(
        "DROP FUNCTION IF EXISTS taskq_admit(timestamptz, int, float8, boolean, text[], int[], "
        "int[], int[])"
    )
    # Admitted jobs carry queued_at again, as the old admission index expects.
    op.execute(
        "UPDATE jobs j SET queued_at = l.granted_at FROM leases l "
        "WHERE l.job_id = j.id AND j.status = 'pending'"
    )
    op.drop_index(
        "ix_jobs_admission", table_name="jobs", postgresql_where=sa.text("status = 'pending'")
    )
    op.create_index(
        "ix_jobs_admission",
        "jobs",
        ["rank", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending' AND queued_at IS NULL"),
    )
    op.create_unique_constraint("jobs_seq_key", "jobs", ["seq"])
    op.drop_constraint("ck_resource_pool_configured", "resource_pool", type_="check")
    op.drop_column("resource_pool", "memory_capacity_configured")
    op.drop_column("resource_pool", "cpu_capacity_configured")
