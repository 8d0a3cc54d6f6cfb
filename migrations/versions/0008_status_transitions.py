"""every status change checked by PostgreSQL against the allowed transitions

A `BEFORE UPDATE OF status` trigger on `jobs` refuses any change of status that is not in
the allowed set, whatever makes it: the Python moves (queue_service/transitions.py, which
check the same table when they are built) and the PL/pgSQL worker flush and admission
alike. Its `WHEN (OLD.status IS DISTINCT FROM NEW.status)` clause keeps it off every update
that leaves the status as it is (leases' heartbeats touch no job row; cancel requests,
decrements of a still-blocked job and result writes keep the status), so only real moves
pay for the function call.

The allowed set is written here as literals: a migration must not import application
code that changes later. tests/migrations checks it equals `model.ALLOWED_TRANSITIONS`
(through `taskq_transition_allowed`, the function the trigger calls).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (from, to): model.ALLOWED_TRANSITIONS when this migration was written.
ALLOWED = (
    ("blocked", "cancelled"),
    ("blocked", "pending"),
    ("blocked", "scheduled"),
    ("cancelled", "blocked"),
    ("failed", "pending"),
    ("pending", "cancelled"),
    ("pending", "running"),
    ("retrying", "cancelled"),
    ("retrying", "pending"),
    ("running", "cancelled"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "retrying"),
    ("scheduled", "cancelled"),
    ("scheduled", "pending"),
)

_PAIRS = ", ".join(f"'{source}>{target}'" for source, target in ALLOWED)


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION taskq_transition_allowed(p_from text, p_to text) RETURNS boolean
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
          SELECT p_from || '>' || p_to = ANY (ARRAY[{_PAIRS}])
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION taskq_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NOT taskq_transition_allowed(OLD.status, NEW.status) THEN
            RAISE EXCEPTION 'job % cannot move from % to %', OLD.id, OLD.status, NEW.status
              USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition';
          END IF;
          RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_status_transition
          BEFORE UPDATE OF status ON jobs
          FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
          EXECUTE FUNCTION taskq_check_transition()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_status_transition ON jobs")
    op.execute("DROP FUNCTION taskq_check_transition()")
    op.execute("DROP FUNCTION taskq_transition_allowed(text, text)")
