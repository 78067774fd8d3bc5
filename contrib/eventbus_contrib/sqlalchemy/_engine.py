"""What every store of this package knows of the application's engine, beyond one table.

The outbox and the dead-letter store live on the same engines and must agree on them:
which databases are served (the dialect strategies), the database's clock (leases are
measured by it, never by one host's), how SQLite is set up to begin transactions
(``BEGIN IMMEDIATE`` for writers, WAL), MariaDB's table options, and how a driver's
error is told without the statement, its parameters (payloads) or the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ._dialects import MySQLDialect, SQLiteDialect, dialect_type
from ._dialects.sqlite import IMMEDIATE, _check_engine, _install_transactions

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["TABLE_OPTIONS", "StoreEngine", "driver_reason"]

TABLE_OPTIONS: Final[Mapping[str, Any]] = MySQLDialect.table_options
"""Options of every table of ours: on MariaDB and MySQL, InnoDB in ``utf8mb4`` with the
binary collation, so names compare case-sensitively."""


class StoreEngine:
    """The application's engine as a store of ours uses it: ``writer`` for the store's
    own short write transactions, ``reader`` for reads, ``now`` the database's clock.

    On SQLite the engine is set up as ``SQLAlchemyOutbox`` sets it up (the same listeners,
    installed once whichever store comes first): writers begin IMMEDIATE, and the
    database is in WAL mode. An in-memory SQLite database is refused: it is private to
    one connection.
    """

    def __init__(self, engine: Engine) -> None:
        strategy = dialect_type(engine)  # refuses a database we do not serve
        self.engine = engine
        self.is_sqlite = strategy is SQLiteDialect
        self.now: sa.ColumnElement[float] = sa.literal_column(strategy.now_sql, sa.Double())
        if self.is_sqlite:
            _check_engine(engine)
            _install_transactions(engine)
            self.writer = engine.execution_options(**{IMMEDIATE: True})
            self.reader = engine
        else:
            # Short transactions at READ COMMITTED: no gap locks (MariaDB), no
            # serialization failures on an engine configured SERIALIZABLE.
            self.writer = self.reader = engine.execution_options(isolation_level="READ COMMITTED")
        self.url = engine.url.render_as_string(hide_password=True)
        self.password = engine.url.password

    def prepare(self) -> None:
        """Put a SQLite database in WAL mode (readers never wait for the writer)."""
        if not self.is_sqlite:
            return
        with self.engine.connect() as opened:
            connection = opened.execution_options(isolation_level="AUTOCOMMIT")
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                connection.exec_driver_sql("PRAGMA journal_mode = WAL")

    def reason(self, exc: sa_exc.SQLAlchemyError) -> str:
        """``driver_reason`` with this engine's password."""
        return driver_reason(exc, self.password)


def driver_reason(exc: sa_exc.SQLAlchemyError, password: str | None) -> str:
    """The driver's message, without the statement and its parameters (payloads), and
    with ``password`` masked."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        reason = f"{type(exc.orig).__name__}: {exc.orig}"
    elif isinstance(exc, sa_exc.StatementError):
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
    else:
        reason = f"{type(exc).__name__}: {exc}"
    if password:
        reason = reason.replace(password, "***")
    return reason
