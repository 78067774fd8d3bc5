"""The shop's database: one small interface over stdlib sqlite3 and SQLAlchemy.

Modules write portable SQL (SQLite and PostgreSQL both run it: ``INSERT ... ON CONFLICT``,
no ``RETURNING``, money as decimal text) with ``:name`` parameters, which sqlite3 and
SQLAlchemy's ``text()`` both understand. So the modules never see which driver is behind
``SHOP_DATABASE_URL``, and neither do their handlers: they open their own connections
here instead of annotating a driver's connection type.

``db.transaction(bus)`` is the unit of work events belong to: ``bus.transaction()`` on the
driver's connection, so outbox rows of durable publishes commit or roll back with the
module's own writes.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eventbus import SQLiteDeadLetterStore, SQLiteOutbox
from eventbus.errors import ConfigurationError

if TYPE_CHECKING:
    from eventbus import EventBus
    from eventbus.typing import DeadLetterStore, OutboxStore

    from .settings import Settings

__all__ = ["Connection", "Database", "Row", "SQLiteDatabase", "open_database"]

Row = dict[str, Any]


class Connection(Protocol):
    """A connection of either driver, running portable SQL."""

    @property
    def driver_connection(self) -> object:
        """What ``bus.transaction()`` takes: a ``sqlite3.Connection`` or SQLAlchemy's."""

    def execute(self, sql: str, /, **params: object) -> int:
        """Run a statement; returns how many rows it changed."""

    def fetch_all(self, sql: str, /, **params: object) -> list[Row]: ...

    def fetch_one(self, sql: str, /, **params: object) -> Row | None: ...

    def begin(self) -> contextlib.AbstractContextManager[object]:
        """A plain transaction (no bus): committed on a clean exit."""


class Database(abc.ABC):
    """Where the shop's tables, its outbox and its inbox live."""

    description: str
    """For people: the driver and where (never a password)."""

    @abc.abstractmethod
    def connect(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection of its own, closed on exit; statements outside a transaction
        are for reading."""

    @abc.abstractmethod
    def make_outbox(self, *, poll_interval: float) -> OutboxStore:
        """The transactional outbox in this database."""

    @abc.abstractmethod
    def make_dead_letters(self, settings: Settings) -> DeadLetterStore:
        """Where the bus keeps what handlers gave up on, shared by every process."""

    @contextlib.contextmanager
    def transaction(self, bus: EventBus | None = None) -> Iterator[Connection]:
        """A transaction on a new connection; with ``bus``, the one events belong to."""
        with self.connect() as connection:
            scope = (
                connection.begin() if bus is None else bus.transaction(connection.driver_connection)
            )
            with scope:
                yield connection

    def create_tables(self, statements: Iterable[str]) -> None:
        """Run ``CREATE TABLE IF NOT EXISTS`` statements (the modules' schemas)."""
        with self.transaction() as connection:
            for statement in statements:
                connection.execute(statement)

    def close(self) -> None:  # noqa: B027 - a no-op unless the driver pools connections
        """Release what the database holds (a pool)."""


class _SQLiteConnection:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    @property
    def driver_connection(self) -> sqlite3.Connection:
        return self._connection

    def execute(self, sql: str, /, **params: object) -> int:
        return self._connection.execute(sql, params).rowcount

    def fetch_all(self, sql: str, /, **params: object) -> list[Row]:
        return [dict(row) for row in self._connection.execute(sql, params)]

    def fetch_one(self, sql: str, /, **params: object) -> Row | None:
        row = self._connection.execute(sql, params).fetchone()
        return None if row is None else dict(row)

    @contextlib.contextmanager
    def begin(self) -> Iterator[object]:
        # IMMEDIATE: take the write lock now, so a busy database waits for its timeout
        # instead of failing at the first write of a transaction that read first.
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")


class SQLiteDatabase(Database):
    """A SQLite file through the standard library: the embedded default."""

    def __init__(self, path: Path, *, timeout: float = 10.0) -> None:
        self.path = path
        self.description = f"SQLite file {path}"
        self._timeout = timeout
        path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        # isolation_level=None: transactions are begun explicitly (bus.transaction() and
        # begin() say BEGIN IMMEDIATE), never implicitly by the driver.
        connection = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            yield _SQLiteConnection(connection)
        finally:
            connection.close()

    def make_outbox(self, *, poll_interval: float) -> OutboxStore:
        return SQLiteOutbox(self.path, timeout=self._timeout, poll_interval=poll_interval)

    def make_dead_letters(self, settings: Settings) -> DeadLetterStore:
        # A file of its own beside the database: the processes of one machine share it.
        return SQLiteDeadLetterStore(settings.dead_letters_path, timeout=self._timeout)


def open_database(settings: Settings) -> Database:
    """The database ``SHOP_DATABASE_URL`` names, or the SQLite file in the data folder."""
    url = settings.database_url
    if url is None:
        return SQLiteDatabase(settings.sqlite_path)
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme not in ("postgresql", "sqlite"):
        raise ConfigurationError(
            f"SHOP_DATABASE_URL: the shop's SQL is written for PostgreSQL and SQLite "
            f"(INSERT ... ON CONFLICT), got a {scheme or 'malformed'} URL; use "
            "postgresql+psycopg://user@host/db, or unset it for the SQLite file in the data folder"
        )
    # Imported here: SQLAlchemy is an extra, and the default path must run without it.
    from .db_sqlalchemy import SQLAlchemyDatabase  # noqa: PLC0415

    return SQLAlchemyDatabase(url)
