"""worker flush and admission run their statements on generic plans

Every statement inside `taskq_worker_flush` and `taskq_admit` has parameters (the
function's arguments). PL/pgSQL caches their plans, but the plan cache re-plans a
statement with parameters for each call as long as a plan made for the actual values
looks cheaper than the generic one, and with arrays unnested into a few rows it always
does: the large claim-and-completion statement was planned afresh on every flush. That
planning was about half of each call (one connection, no contention, 4 jobs per flush:
claim 2.6 -> 1.1 ms, end with admission 3.4 -> 1.7 ms).

The plans the functions need do not depend on the values: every row is reached by
primary key, and the admission candidates in `ix_jobs_admission` order (migration 0006).
So both functions run with `plan_cache_mode = force_generic_plan`, set on the function:
PostgreSQL applies it while the function runs, including the triggers and foreign-key
checks it fires (parameterised primary-key lookups, generic already), and restores the
caller's value when it returns.

A later `CREATE OR REPLACE FUNCTION` of either function drops the setting: such a
migration must set it again.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SIGNATURES = (
    "taskq_worker_flush(timestamptz, text, float8, float8, int, float8, text[], int[], "
    "boolean[], text[], int[], text[], text[], int[])",
    "taskq_admit(timestamptz, int, float8, boolean, text[], int[], int[], int[])",
)


def upgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"ALTER FUNCTION {signature} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    for signature in SIGNATURES:
        op.execute(f"ALTER FUNCTION {signature} RESET plan_cache_mode")
