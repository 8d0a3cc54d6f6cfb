"""the worker flush takes its items as one JSON parameter

`taskq_worker_flush` took nine parallel arrays (claims, ends, releases). The worker
passed them as nine array parameters, and the driver's conversion of those arrays was
the largest single cost of a flush in the worker's Python (about 430 us per flush of six
claims and six ends, against 75 us to encode the same items as one JSON text): psycopg
converts list parameters element by element in Python.

The function now takes `p_items jsonb`, one object with the same nine arrays under the
names of the old parameters ("claim_jobs", "claim_attempts", ...; every key optional),
and unpacks it at the top into variables of those names, so the rest of the body is
unchanged. A new argument list is a new function in PostgreSQL: the old one is dropped,
and the new one gets migration 0009's `plan_cache_mode` again.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

from migrations.revision_files import load_revision

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


_0010 = load_revision("0010_started_when_handler_starts.py")

OLD_ARGUMENTS = _0010.NEW_ARGUMENTS
NEW_ARGUMENTS = "timestamptz, text, float8, float8, int, float8, jsonb"

# The arrays of p_items, element type and key: unpacked under the old parameters' names.
ARRAYS = (
    ("p_claim_jobs", "text", "claim_jobs"),
    ("p_claim_attempts", "int", "claim_attempts"),
    ("p_claim_redelivered", "boolean", "claim_redelivered"),
    ("p_done_jobs", "text", "done_jobs"),
    ("p_done_attempts", "int", "done_attempts"),
    ("p_done_results", "text", "done_results"),
    ("p_done_started", "timestamptz", "done_started"),
    ("p_release_jobs", "text", "release_jobs"),
    ("p_release_attempts", "int", "release_attempts"),
)

_OLD_PARAMETERS = "".join(f"    {name} {kind}[],\n" for name, kind, _ in ARRAYS)[:-2] + "\n"
_DECLARED = "".join(f"  {name} {kind}[];\n" for name, kind, _ in ARRAYS)
# One statement for all nine (each a scalar subquery over its JSON array, in array order);
# a missing key or an empty array gives an empty array, a JSON null element SQL NULL.
_UNPACK = (
    "  SELECT "
    + ",\n         ".join(
        f"ARRAY(SELECT e.v::{kind} FROM jsonb_array_elements_text(p_items->'{key}')"
        " WITH ORDINALITY AS e(v, n) ORDER BY e.n)"
        for _, kind, key in ARRAYS
    )
    + "\n    INTO "
    + ", ".join(name for name, _, _ in ARRAYS)
    + ";\n\n"
)

EDITS = (
    (_OLD_PARAMETERS, "    p_items jsonb\n"),
    ("DECLARE\n  v_ids text[];\n", "DECLARE\n" + _DECLARED + "  v_ids text[];\n"),
    ("BEGIN\n  -- 1. The running rows", "BEGIN\n" + _UNPACK + "  -- 1. The running rows"),
)


def flush_function() -> str:
    body: str = _0010.flush_function()
    for old, new in EDITS:
        if body.count(old) != 1:
            raise RuntimeError("migration 0010's taskq_worker_flush is not the one this one edits")
        body = body.replace(old, new)
    return body


def upgrade() -> None:
    op.execute(f"DROP FUNCTION taskq_worker_flush({OLD_ARGUMENTS})")
    op.execute(flush_function())
    op.execute(
        f"ALTER FUNCTION taskq_worker_flush({NEW_ARGUMENTS}) "
        "SET plan_cache_mode = force_generic_plan"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION taskq_worker_flush({NEW_ARGUMENTS})")
    op.execute(_0010.flush_function())
    op.execute(
        f"ALTER FUNCTION taskq_worker_flush({OLD_ARGUMENTS}) "
        "SET plan_cache_mode = force_generic_plan"
    )
