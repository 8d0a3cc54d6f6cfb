"""a claim withdrawn before its handler started: running -> pending

A worker that claims each message as it is delivered (`TASKQ_CLAIM_ON_DELIVERY`) holds
claimed attempts whose handlers have not started. When it shuts down, Dramatiq hands those
messages back to RabbitMQ; the worker first withdraws their claims (running -> pending, the
attempt number and the unstarted lease restored), so another worker's claim of the
redelivered message succeeds and no attempt is spent. The allowed set of migration 0008
gains that one pair.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _allowed_function(pairs: tuple[tuple[str, str], ...]) -> str:
    listed = ", ".join(f"'{source}>{target}'" for source, target in sorted(pairs))
    return f"""
        CREATE OR REPLACE FUNCTION taskq_transition_allowed(p_from text, p_to text)
        RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
          SELECT p_from || '>' || p_to = ANY (ARRAY[{listed}])
        $$
        """


def upgrade() -> None:
    allowed: tuple[tuple[str, str], ...] = load_revision("0008_status_transitions.py").ALLOWED
    op.execute(_allowed_function((*allowed, ("running", "pending"))))


def downgrade() -> None:
    op.execute(_allowed_function(load_revision("0008_status_transitions.py").ALLOWED))
