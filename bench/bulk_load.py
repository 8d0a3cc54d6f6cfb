"""Loading large tables fast: build the secondary indexes of `jobs` once, after the rows."""

from __future__ import annotations

import psycopg


def drop_jobs_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop the secondary indexes of `jobs` (not those behind constraints); returns their
    definitions, to run again after the load so the schema stays the migrated one."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'jobs' AND indexname "
        "NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass)"
    ).fetchall()
    for name, _ in rows:
        conn.execute(f"DROP INDEX {name}")
    return [definition for _, definition in rows]
