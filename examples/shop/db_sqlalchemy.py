"""The shop's database through SQLAlchemy (PostgreSQL, or SQLite by URL).

Imported only when ``SHOP_DATABASE_URL`` is set, so the default path needs no SQLAlchemy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from eventbus.errors import MissingDependencyError

from .db import Connection, Database, Row

try:
    import sqlalchemy as sa
    from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore, SQLAlchemyOutbox
except ImportError as error:  # pragma: no cover - the dev extras install both
    raise MissingDependencyError(
        'SHOP_DATABASE_URL needs SQLAlchemy and a driver: pip install -e ".[sqlalchemy,postgres]"'
    ) from error

if TYPE_CHECKING:
    from eventbus.typing import DeadLetterStore, OutboxStore

    from .settings import Settings

__all__ = ["SQLAlchemyDatabase"]


class _SQLAlchemyConnection:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    @property
    def driver_connection(self) -> sa.Connection:
        return self._connection

    def execute(self, sql: str, /, **params: object) -> int:
        # The rowcount of an INSERT ... ON CONFLICT DO NOTHING is what idempotent
        # handlers read; SQLAlchemy keeps an INSERT's only when asked.
        statement = sa.text(sql).execution_options(preserve_rowcount=True)
        return self._connection.execute(statement, params).rowcount

    def fetch_all(self, sql: str, /, **params: object) -> list[Row]:
        return [dict(row) for row in self._connection.execute(sa.text(sql), params).mappings()]

    def fetch_one(self, sql: str, /, **params: object) -> Row | None:
        row = self._connection.execute(sa.text(sql), params).mappings().first()
        return None if row is None else dict(row)

    def begin(self) -> contextlib.AbstractContextManager[object]:
        return self._connection.begin()


class SQLAlchemyDatabase(Database):
    """One engine for the shop's tables and its outbox."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.description = (
            f"{self.engine.dialect.name} at {self.engine.url.render_as_string(hide_password=True)}"
        )

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            yield _SQLAlchemyConnection(connection)

    def create_tables(self, statements: Iterable[str]) -> None:
        with self._one_at_a_time() as connection:
            for statement in statements:
                connection.execute(statement)

    def make_outbox(self, *, poll_interval: float) -> OutboxStore:
        # SQLAlchemyOutbox creates its tables if need be, unguarded: processes starting
        # together would race on PostgreSQL (tests/unit/test_sqlalchemy_outbox_create_race.py).
        # On SQLite, it sets up BEGIN IMMEDIATE on this engine: every connection must come
        # from it after this (connect() does).
        with self._one_at_a_time():
            return SQLAlchemyOutbox(self.engine, poll_interval=poll_interval)

    def make_dead_letters(self, settings: Settings) -> DeadLetterStore:
        """In the shop's database, beside the outbox: every process on every host sees
        (and ``eventbus dlq`` replays) the same letters."""
        del settings  # nothing on disk: the database holds them
        with self._one_at_a_time():
            return SQLAlchemyDeadLetterStore(self.engine)

    @contextlib.contextmanager
    def _one_at_a_time(self) -> Iterator[Connection]:
        """A transaction that, on PostgreSQL, holds the shop's schema lock until it ends.

        Workers started together build the shop at once, and two sessions racing on
        CREATE TABLE IF NOT EXISTS fail on PostgreSQL: they take turns instead.
        """
        with self.transaction() as connection:
            if self.engine.dialect.name == "postgresql":
                connection.execute("SELECT pg_advisory_xact_lock(hashtext('examples.shop'))")
            yield connection

    def close(self) -> None:
        self.engine.dispose()
