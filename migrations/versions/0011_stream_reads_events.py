"""the live stream reads job_events; a commit sends one empty NOTIFY

Every INSERT into job_events ran a statement trigger that built a JSON payload of its rows
(a transition table, a join to `jobs` for the type, `json_build_object` per row) and sent
it with `pg_notify`, whether or not any client was subscribed: about a quarter of
PostgreSQL's time per no-op job (`pg_stat_statements`, nested statements). The trigger
now sends `NOTIFY job_events` with an empty payload and no transition table; PostgreSQL
folds a transaction's identical notifications into one. The API's stream reader
(api/stream.py) reads the committed rows by id when woken, and only while clients are
subscribed.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION taskq_notify_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('job_events', '');
  RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.execute("DROP TRIGGER job_events_notify ON job_events")
    op.execute(NOTIFY_FUNCTION)
    op.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskq_notify_job_events()"
    )


def downgrade() -> None:
    previous: str = load_revision("0002_batched_worker_path.py").NOTIFY_FUNCTION
    op.execute("DROP TRIGGER job_events_notify ON job_events")
    op.execute(previous.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events "
        "REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskq_notify_job_events()"
    )
