"""Database engine and transactions."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import psycopg.errors
import sqlalchemy as sa

from queue_service.settings import Settings

T = TypeVar("T")

# Two transactions that lock the same rows in different orders: PostgreSQL aborts one.
# The lock order of the repository makes this rare; running the loser again makes it safe.
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def make_engine(settings: Settings, *, pool_size: int = 10) -> sa.Engine:
    """An engine for `settings.database_url`; connections are checked before use."""
    return sa.create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping (it costs a round trip per checkout, several per job): a connection
        # PostgreSQL dropped fails once, is invalidated, and in_transaction runs again.
        pool_pre_ping=False,
        pool_recycle=1800,
    )


def in_transaction(engine: sa.Engine, work: Callable[[sa.Connection], T], attempts: int = 5) -> T:
    """Run `work` in one transaction, again if PostgreSQL aborted it for a deadlock."""
    return _retried(engine.begin, work, attempts)


def in_autocommit(engine: sa.Engine, work: Callable[[sa.Connection], T], attempts: int = 5) -> T:
    """Run `work`, which is one statement, as its own transaction: no BEGIN and no COMMIT
    round trip (the statement commits durably as it ends). Retried as in_transaction."""

    def connect() -> sa.Connection:
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    return _retried(connect, work, attempts)


def _retried(
    open_connection: Callable[[], AbstractContextManager[sa.Connection]],
    work: Callable[[sa.Connection], T],
    attempts: int,
) -> T:
    """`work` on a connection from `open_connection`, run again (up to `attempts` times)
    when PostgreSQL aborted it for a deadlock or the connection was lost."""
    for attempt in range(1, attempts + 1):
        try:
            with open_connection() as conn:
                return work(conn)
        except sa.exc.DBAPIError as error:
            retryable = error.connection_invalidated or isinstance(error.orig, _RETRYABLE)
            if attempt == attempts or not retryable:
                raise
    raise AssertionError("unreachable")


def relaxed_commit(conn: sa.Connection) -> sa.Connection:
    """This transaction's commit does not wait for its WAL to reach the disk
    (`synchronous_commit = off`, for this transaction only). Only for work a crash may
    lose because it is re-derived: admission and token accounting, never a job's state."""
    conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
    return conn


def execute_in_driver(
    conn: sa.Connection, statement: str, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run one hot statement (psycopg's `%(name)s` placeholders) on the driver connection
    under `conn`, in its transaction, and return its rows as tuples.

    For the statements a worker runs per flush: SQLAlchemy's compilation, parameter and
    result processing cost a measurable share of the worker's CPU per job. psycopg
    prepares the statement on the server after a few executions. Errors come back as
    SQLAlchemy's, with the connection invalidated when it was lost, as from
    `conn.execute`, so `in_transaction` and `in_autocommit` retry them the same way.
    """
    driver: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
    try:
        return driver.execute(statement, params).fetchall()
    except psycopg.Error as error:
        lost = driver.broken or driver.closed
        if lost:
            conn.invalidate()
        raise sa.exc.DBAPIError.instance(
            statement, dict(params), error, psycopg.Error, connection_invalidated=lost
        ) from error
