"""One dialect strategy object per database, chosen once from the engine's dialect.

``base`` says what the store asks of a database; ``postgresql``, ``mysql`` (MariaDB
too) and ``sqlite`` answer it. The store never asks which database it is on: it asks its
dialect object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .._core import ConfigurationError
from .base import OutboxDialect
from .mysql import MySQLDialect
from .postgresql import PostgreSQLDialect
from .sqlite import SQLiteDialect

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Engine

__all__ = [
    "MySQLDialect",
    "OutboxDialect",
    "PostgreSQLDialect",
    "SQLiteDialect",
    "dialect_for",
    "dialect_type",
]

_BY_NAME: Final[dict[str, type[OutboxDialect]]] = {
    "postgresql": PostgreSQLDialect,
    "mysql": MySQLDialect,
    "mariadb": MySQLDialect,
    "sqlite": SQLiteDialect,
}
"""SQLAlchemy's dialect names, to the strategy that serves them."""


def dialect_type(engine: Engine) -> type[OutboxDialect]:
    """The strategy for ``engine``'s database; a database the outbox does not serve is
    refused."""
    name = engine.dialect.name
    found = _BY_NAME.get(name)
    if found is None:
        raise ConfigurationError(
            f"SQLAlchemyOutbox serves PostgreSQL, MariaDB, MySQL and SQLite, not {name}"
        )
    return found


def dialect_for(engine: Engine, outbox: sa.Table, inbox: sa.Table) -> OutboxDialect:
    """The strategy object for one store: ``engine``'s database, these two tables."""
    return dialect_type(engine)(engine, outbox, inbox)
