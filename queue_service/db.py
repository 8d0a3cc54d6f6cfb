"""Database engine and transaction helpers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from queue_service.settings import Settings


def make_engine(settings: Settings, *, pool_size: int = 10) -> sa.Engine:
    """An engine for `settings.database_url`; connections are checked before use."""
    return sa.create_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


@contextmanager
def transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    with engine.begin() as connection:
        yield connection
