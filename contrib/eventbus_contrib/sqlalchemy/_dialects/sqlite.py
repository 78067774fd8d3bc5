"""SQLite (>= 3.35, the ``pysqlite`` driver, a database file): the claim of ``SQLiteOutbox``.

The claim is the same single ``UPDATE ... RETURNING`` as ``eventbus.outbox.SQLiteOutbox``
(without its inbox column).
SQLite has one writer at a time, so the transactions of the outbox and of
``bus.transaction()`` take the write lock at BEGIN (``BEGIN IMMEDIATE``): a deferred one
that reads then writes fails at once with SQLITE_BUSY instead of waiting. To emit that
BEGIN at all, the store installs SQLAlchemy's documented pysqlite workaround on the
engine (a ``connect`` listener turns the driver's own BEGIN off, a ``begin`` listener
emits BEGIN itself), which is also what makes savepoints work on SQLite. Sessions and
connections must therefore come from this very engine, made after the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from eventbus.outbox.claims import claim_sql, window_sql

from .._core import ConfigurationError
from .base import ReturningDialect

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["IMMEDIATE", "SQLiteDialect", "check_began"]

IMMEDIATE: Final = "eventbus_begin_immediate"
"""An execution option: on SQLite, this connection's transaction begins IMMEDIATE."""


class SQLiteDialect(ReturningDialect):
    """SQLite through pysqlite, in WAL mode."""

    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    floor = ((3, 35), "SQLite 3.35 (UPDATE ... RETURNING)")
    begins_immediate = True

    def __init__(self, engine: Engine, outbox: sa.Table, inbox: sa.Table) -> None:
        _check_engine(engine)
        _install_transactions(engine)
        super().__init__(engine, outbox, inbox)

    def _engines(self, engine: Engine) -> tuple[Engine, Engine, Engine]:
        # The relay's and the handlers' transactions take SQLite's write lock at
        # BEGIN: a deferred one that reads then writes fails at once with SQLITE_BUSY.
        writer = engine.execution_options(**{IMMEDIATE: True})
        return writer, engine, writer

    def prepare(self, connection: Connection) -> None:
        """Also switch the database to WAL (readers never wait for the writer)."""
        super().prepare(connection)
        mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
        if str(mode).lower() != "wal":
            connection.exec_driver_sql("PRAGMA journal_mode = WAL")

    def _claim_sql(self, statement: str) -> str:
        if statement == "window":
            return window_sql(self.outbox.name, None, self.now_sql)
        per_key = 2 if statement == "runs" else 1
        return claim_sql(self.outbox.name, None, self.now_sql, per_key=per_key)

    def _insert_new(self, values: dict[str, Any] | list[dict[str, Any]]) -> sa.Insert:
        return sqlite.insert(self.inbox).values(values).on_conflict_do_nothing()

    def _driver_autocommits(self, connection: Connection) -> bool:
        """Never: the driver's flag is off on purpose (``_begin`` emits BEGIN)."""
        del connection
        return False

    def check_engine(self, engine: Engine, outbox_engine: Engine, *, what: str, kind: str) -> None:
        """Only the outbox's own engine: its transactions are set up by listeners on it."""
        if engine.pool is not outbox_engine.pool:
            raise ConfigurationError(
                f"{what} got a {kind} of another SQLite engine; on "
                "SQLite, use the engine given to SQLAlchemyOutbox (it sets up BEGIN "
                "IMMEDIATE and savepoints on that engine)"
            )

    def check_async(self, *, what: str, kind: str) -> None:
        raise ConfigurationError(
            f"{what} does not take a {kind} on SQLite yet: use a Session of the "
            "outbox's engine with bus.transaction()"
        )


def check_began(connection: Connection) -> None:
    """Refuse a connection that did not BEGIN: one made before the store set up its engine."""
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        raise ConfigurationError(
            "this SQLite connection did not begin a transaction: it was made before the "
            "SQLAlchemyOutbox set up its engine. Create the outbox first, then sessions"
        )


def _check_engine(engine: Engine) -> None:
    if engine.dialect.driver != "pysqlite":
        raise ConfigurationError(
            f"on SQLite the outbox needs the pysqlite driver (sqlite:///path), got "
            f"{engine.dialect.driver}"
        )
    database = engine.url.database or ""
    memory = database in ("", ":memory:") or "mode=memory" in database
    if memory or engine.url.query.get("mode") == "memory":
        raise ConfigurationError(
            "the outbox must live in a database file that the application's own "
            "connections share; an in-memory SQLite database is private to one connection"
        )


def _connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    """pysqlite must not BEGIN on its own: SQLAlchemy's begin listener does it."""
    del record
    dbapi_connection.isolation_level = None


def _begin(connection: Connection) -> None:
    """Emit BEGIN (IMMEDIATE when asked) where SQLAlchemy begins a transaction."""
    options = connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and raw.isolation_level is not None:
        # A pooled connection whose isolation level SQLAlchemy reset (it sets "" again).
        raw.isolation_level = None
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(IMMEDIATE) else "BEGIN")


def _install_transactions(engine: Engine) -> None:
    """SQLAlchemy's documented pysqlite workaround, once per engine."""
    if not sa.event.contains(engine, "connect", _connect):
        sa.event.listen(engine, "connect", _connect)
    if not sa.event.contains(engine, "begin", _begin):
        sa.event.listen(engine, "begin", _begin)
