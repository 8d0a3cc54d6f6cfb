"""Database engine and transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar, cast

import psycopg
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


class HeldAutocommit:
    """One connection held open in autocommit, for a thread that runs a one-statement
    transaction many times a second (a worker's writer): no pool checkout, isolation
    switch and reset per statement. A lost connection is replaced on the next call; one
    thread at a time uses it."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._conn: sa.Connection | None = None

    def run(self, engine: sa.Engine, work: Callable[[sa.Connection], T], attempts: int = 5) -> T:
        """`in_autocommit` on the held connection (`engine` must be the one it holds)."""
        assert engine is self._engine
        return _retried(self._held, work, attempts)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def _held(self) -> Iterator[sa.Connection]:
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self.close()
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        yield self._conn


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


@contextmanager
def driver_connection(conn: sa.Connection, statement: str) -> Iterator[psycopg.Connection[Any]]:
    """The psycopg connection under `conn`, in its transaction, for a hot statement run at
    the driver level (SQLAlchemy's compilation, parameter and result processing cost a
    measurable share of the CPU per job or per request). A driver error comes out as
    SQLAlchemy's (sa.exc.DataError, ...), with a lost connection invalidated, as from
    `conn.execute`: the retries of `in_transaction` and `in_autocommit`, the api's group
    split and its error answers see what they always saw."""
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    try:
        yield raw
    except psycopg.Error as error:
        lost = conn.dialect.is_disconnect(cast(Any, error), conn.connection.dbapi_connection, None)
        if lost:
            conn.invalidate(error)
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            error,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=conn.dialect,
        ) from error


def execute_in_driver(
    conn: sa.Connection, statement: str, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Run one statement (psycopg's `%(name)s` placeholders) on the driver connection under
    `conn` (`driver_connection`) and return its rows as tuples; psycopg prepares it on the
    server after a few executions."""
    with driver_connection(conn, statement) as driver:
        return driver.execute(statement, params).fetchall()
