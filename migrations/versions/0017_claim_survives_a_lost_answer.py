"""a worker's claim, sent again after its commit answer was lost, gets its attempt back

The writer runs its flush again when the connection drops (db.HeldAutocommit, `_retried`).
When the drop came after PostgreSQL committed the flush, the claims in it had started their
leases, and the second run found them started: no row came back, the worker skipped the
messages, and the attempts stayed claimed by a live worker that never ran them (its
heartbeat renewed their leases for as long as it lived).

A run again of one flush carries the same `p_now` (the writer takes the time once per
flush) and the same worker, so the claim now also takes a lease that this worker started
at this very instant: its own claim, committed. Any other claim of a started lease (a
second delivery, another worker, a later flush of the same worker) still gets nothing.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_0016 = load_revision("0016_claim_writes_the_lease.py")

CLAIM_GUARD = "WHERE l.job_id = w.job_id AND l.attempt = w.attempt AND l.started_at IS NULL"
CLAIM_GUARD_AGAIN = (
    "WHERE l.job_id = w.job_id AND l.attempt = w.attempt\n"
    "       AND (l.started_at IS NULL\n"
    "            -- this flush run again after a lost commit answer: its own claim\n"
    "            OR l.worker = p_worker AND l.started_at = p_now)"
)


def flush_function() -> str:
    body: str = _0016.flush_function()
    if body.count(CLAIM_GUARD) != 1:
        raise RuntimeError("migration 0016's taskq_worker_flush is not the one this one edits")
    return body.replace(CLAIM_GUARD, CLAIM_GUARD_AGAIN)


def upgrade() -> None:
    op.execute(flush_function())
    _0016._set_function_settings()


def downgrade() -> None:
    op.execute(_0016.flush_function())
    _0016._set_function_settings()
