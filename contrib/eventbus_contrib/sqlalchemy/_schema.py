"""The outbox's schema: its two tables, their DDL, and the columns added since the first
release (created by the store, or given as statements for the application's migrations).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.schema import CreateIndex, CreateTable

from ._core import ConfigurationError
from ._dialects import MySQLDialect

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from ._dialects import OutboxDialect

__all__ = ["ADDED_COLUMNS", "OutboxSchema", "check_prefix", "outbox_tables"]

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")

ADDED_COLUMNS: Final = ("first_failed_at",)
"""Columns of the outbox added after its first release: a store that creates the schema
adds those an existing table lacks; one that may not (``create=False``) refuses to start,
giving the statements to run."""


def outbox_tables(metadata: sa.MetaData, *, prefix: str = "eventbus") -> tuple[sa.Table, sa.Table]:
    """The outbox and inbox tables, ``{prefix}_outbox`` and ``{prefix}_inbox``, in ``metadata``.

    For applications that manage their schema with Alembic: include them in the metadata
    that migrations are generated from, and open the store with ``create=False``. Calling
    it again on the same metadata returns the same tables.

    The columns match ``SQLiteOutbox.schema_sql()``: times are unix seconds (doubles)
    from the database clock; ``id`` never goes back (``AUTOINCREMENT`` on SQLite, a
    sequence on PostgreSQL, InnoDB's persistent counter on MariaDB >= 10.2.4).
    ``(destination, key, id)`` is indexed on the first 255 characters of ``key`` on
    MariaDB/MySQL, whose index entries cannot hold 1024 utf8mb4 characters. On
    PostgreSQL, also run ``ALTER TABLE {prefix}_outbox SET (fillfactor = 50)`` in the
    migration (the store does it for tables it creates; ``schema_sql()`` includes it): it
    halves what the relay's claims cost.

    Tables of an earlier release lack ``first_failed_at`` (a nullable double): Alembic's
    autogenerate adds it, ``SQLAlchemyOutbox.migration_sql()`` gives the statement, and a
    store opened with ``create=True`` adds it itself.
    """
    check_prefix(prefix)
    outbox_name, inbox_name = f"{prefix}_outbox", f"{prefix}_inbox"
    if outbox_name in metadata.tables and inbox_name in metadata.tables:
        return metadata.tables[outbox_name], metadata.tables[inbox_name]
    outbox = sa.Table(
        outbox_name,
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("envelope_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("destination", sa.String(200), nullable=False),
        sa.Column("key", sa.String(1024), nullable=True),
        sa.Column(
            "payload",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("available_at", sa.Double(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.Double(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("first_failed_at", sa.Double(), nullable=True),
        sqlite_autoincrement=True,
        **MySQLDialect.table_options,
    )
    sa.Index(f"{outbox_name}_available", outbox.c.available_at, outbox.c.id)
    sa.Index(
        f"{outbox_name}_key",
        outbox.c.destination,
        outbox.c.key,
        outbox.c.id,
        mysql_length={"key": MySQLDialect.key_index_length},
        mariadb_length={"key": MySQLDialect.key_index_length},
    )
    inbox = sa.Table(
        inbox_name,
        metadata,
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("envelope_id", sa.String(36), primary_key=True),
        sa.Column("processed_at", sa.Double(), nullable=False),
        **MySQLDialect.table_options,
    )
    return outbox, inbox


def check_prefix(prefix: object) -> None:
    """Refuse a table prefix that cannot name tables and indexes on every database."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            "prefix must be 1 to 40 letters, digits or underscores, not starting with a "
            f"digit (it names tables and indexes), got {prefix!r}"
        )


class OutboxSchema:
    """One store's tables on its engine's database: their DDL, the statements that bring
    an outbox of an earlier release up to date, and creating them."""

    def __init__(
        self, engine: Engine, outbox: sa.Table, inbox: sa.Table, dialect: OutboxDialect
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._inbox = inbox
        self._dialect = dialect

    def ddl(self) -> str:
        """Both tables and their indexes, then the outbox's storage settings."""
        dialect = self._engine.dialect
        statements: list[str] = []
        for table in (self._outbox, self._inbox):
            statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
            statements.extend(
                str(CreateIndex(index).compile(dialect=dialect)).strip()
                for index in sorted(table.indexes, key=lambda index: str(index.name))
            )
        statements.extend(self._dialect.storage_sql())
        return "".join(f"{statement};\n" for statement in statements)

    def migration(self) -> str:
        """What brings an outbox table of an earlier release up to date."""
        return "".join(f"{statement};\n" for statement in self._add_column_sql(ADDED_COLUMNS))

    def _add_column_sql(self, names: Iterable[str]) -> list[str]:
        dialect = self._engine.dialect
        columns = [self._outbox.c[name] for name in names]
        return [
            f"ALTER TABLE {self._outbox.name} ADD COLUMN {column.name} "
            f"{column.type.compile(dialect=dialect)} NULL"
            for column in columns
        ]

    def missing_columns(self, connection: Connection) -> list[str]:
        """The added columns an existing outbox table lacks (none if there is no table)."""
        inspector = sa.inspect(connection)
        if not inspector.has_table(self._outbox.name):
            return []
        found = {column["name"] for column in inspector.get_columns(self._outbox.name)}
        return [name for name in ADDED_COLUMNS if name not in found]

    def create(self, connection: Connection) -> None:
        """Create the tables unless they exist, and add the columns an existing outbox
        lacks, in ``connection``'s transaction (under the dialect's schema lock, where it
        has one: SQLite's write lock is taken at BEGIN)."""
        self._dialect.lock_schema(connection)
        storage = self._dialect.storage_sql()
        new = bool(storage) and not sa.inspect(connection).has_table(self._outbox.name)
        self._outbox.metadata.create_all(connection, tables=[self._outbox, self._inbox])
        if new:  # a table the application made keeps its own storage settings
            for statement in storage:
                connection.exec_driver_sql(statement)
        self._add_missing_columns(connection)

    def _add_missing_columns(self, connection: Connection) -> None:
        for statement in self._add_column_sql(self.missing_columns(connection)):
            connection.exec_driver_sql(statement)

    def begun(self, connection: Connection) -> bool:
        """Whether either table is there (perhaps another process is making the other)."""
        inspector = sa.inspect(connection)
        return any(inspector.has_table(table.name) for table in (self._outbox, self._inbox))

    def complete(self, connection: Connection) -> bool:
        """Whether both tables are there, with every column."""
        inspector = sa.inspect(connection)
        if not all(inspector.has_table(table.name) for table in (self._outbox, self._inbox)):
            return False
        return not self.missing_columns(connection)
