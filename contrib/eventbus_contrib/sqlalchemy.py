"""The transactional outbox on SQLAlchemy 2: PostgreSQL, MariaDB (and MySQL 8) and SQLite.

``pip install "eventbus[sqlalchemy]"`` (plus ``postgres`` or ``mysql`` for a driver)::

    engine = create_engine("postgresql+psycopg://app@db/app")
    bus = EventBus(outbox=SQLAlchemyOutbox(engine))

    with Session(engine) as session, bus.transaction(session):
        session.add(Order(...))
        bus.publish(OrderPlaced(...))  # its outbox rows commit with the order

Rows are written through the application's ``Session`` (or ``Connection``), in its
transaction, as one multi-row INSERT; the relay claims, completes (writing the inbox
marks of the delivered rows in the same transaction), reschedules and renews them in
short transactions of its own, fenced by its lease owner. Leases and retry times come
from the database's clock, never from this process's.

Claiming never relies on ids being committed in order (they are not on PostgreSQL and
MariaDB: a sequence value is taken at INSERT, not at COMMIT). It picks rows by state,
``FOR UPDATE SKIP LOCKED``, oldest first; a transaction that commits late makes its rows
claimable at its commit, whatever the relay claimed meanwhile. Per (destination, key), a
row is claimable only while no earlier row of that key is left (in any state), which
keeps outbox order across retries and several relays. On PostgreSQL and MariaDB "earlier"
means a smaller id among committed rows: two transactions that publish the same key at
the same time are delivered in commit order, not in id order.

Per database:

- PostgreSQL (>= 9.5): one statement, ``WITH c AS MATERIALIZED (SELECT ... FOR UPDATE
  SKIP LOCKED) UPDATE ... FROM c RETURNING``. Not ``WHERE id IN (SELECT ...)``: planned
  as a nested loop, that subquery runs again per outer row and leases far more than the
  batch. The clock is ``clock_timestamp()`` (``now()`` is the transaction's start). The
  claim's transaction sets ``enable_seqscan = off`` (``SET LOCAL``): with statistics the
  planner would scan and sort the whole table for every claim.
- MariaDB (>= 10.6) and MySQL (>= 8.0) have no ``UPDATE ... RETURNING``: one short
  transaction runs ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE ... WHERE id IN``.
  The relay's transactions run at READ COMMITTED, so a claim never takes gap locks that
  would stall the application's INSERTs. The clock is ``UNIX_TIMESTAMP() +
  MICROSECOND(NOW(6)) / 1e6``: both read the statement's start time, and unlike
  ``UNIX_TIMESTAMP(NOW(6))`` it does not go through the session time zone, which is
  ambiguous for an hour each year under daylight saving time. Tables are ``utf8mb4`` with
  the binary collation ``utf8mb4_bin``, so handler names and keys compare case-sensitively
  (the server default ``utf8mb4_general_ci`` would make handlers ``a.B`` and ``a.b`` share
  an inbox). Like every ``PAD SPACE`` collation it ignores trailing spaces.
- SQLite (>= 3.35, the ``pysqlite`` driver, a database file): the same single
  ``UPDATE ... RETURNING`` as ``eventbus.outbox.SQLiteOutbox``. The store installs
  SQLAlchemy's documented workaround on the engine (a ``connect`` listener sets the
  driver's ``isolation_level`` to None, a ``begin`` listener emits BEGIN itself), which is
  what makes savepoints (``session.begin_nested()``) work on SQLite at all. Transactions of
  the outbox and of ``bus.transaction()`` begin with ``BEGIN IMMEDIATE``, others with a
  plain ``BEGIN``. The database is switched to WAL. Create sessions and connections after
  the store, on its engine.

``outbox_tables()`` gives the two tables for an application's ``MetaData`` (Alembic's
``target_metadata``); then pass ``create=False``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

from eventbus import RedactingFilter, redact
from eventbus.errors import ConfigurationError, MissingDependencyError, OutboxError
from eventbus.outbox import ClaimedRow, OutboxStatus, PendingRow

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.dialects import mysql, postgresql, sqlite
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session, SessionTransaction, scoped_session
    from sqlalchemy.schema import CreateIndex, CreateTable
except ImportError as error:  # pragma: no cover - the extra is installed in development
    raise MissingDependencyError(
        'eventbus_contrib.sqlalchemy needs SQLAlchemy 2: pip install "eventbus[sqlalchemy]"'
    ) from error

from ._sqlalchemy_transactions import (
    after_session_commit,
    open_resources,
    watch_engine,
    watch_sessions,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL
    from sqlalchemy.engine.interfaces import DBAPIConnection
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncSession,
        AsyncSessionTransaction,
        AsyncTransaction,
    )
    from sqlalchemy.pool import ConnectionPoolEntry

    from eventbus.typing import AsyncTransactionControl, CommitHook, TransactionControl

__all__ = ["SQLAlchemyOutbox", "outbox_tables"]

logger = logging.getLogger("eventbus.sqlalchemy")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_KEY_INDEX_PREFIX: Final = 255
"""Characters of ``key`` in the (destination, key, id) index on MariaDB/MySQL: 1024
characters of utf8mb4 are 4096 bytes, over InnoDB's 3072-byte limit for an index entry.
The column keeps all 1024; the index narrows by the first 255 and the row decides."""

_CHUNK_ROWS: Final = 500
_CHUNK_BYTES: Final = 2 * 1024 * 1024
"""A multi-row INSERT carries at most this many rows and payload bytes, well inside every
database's bound-parameter limit and MariaDB's default ``max_allowed_packet`` (16 MiB)."""

_ERROR_LENGTH: Final = 2000

_ADDED_COLUMNS: Final = ("first_failed_at",)
"""Columns of the outbox added after its first release: a store that creates the schema
adds those an existing table lacks; one that may not (``create=False``) refuses to start,
giving the statements to run."""

_FILLFACTOR: Final = 50
"""Percent of each PostgreSQL outbox page filled by INSERTs (see _fillfactor_sql)."""

_CLAIMED: Final = (
    "id",
    "envelope_id",
    "name",
    "destination",
    "key",
    "payload",
    "attempts",
    "created_at",
    "first_failed_at",
)

_IMMEDIATE: Final = "eventbus_begin_immediate"
"""An execution option: on SQLite, this connection's transaction begins IMMEDIATE."""

_NOW_SQL: Final = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
    "mysql": "(UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6)",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
"""Unix seconds with sub-second precision, from the database's clock."""

_MINIMUM_VERSIONS: Final = {
    "postgresql": ((9, 5), "PostgreSQL 9.5 (FOR UPDATE SKIP LOCKED)"),
    "mariadb": ((10, 6), "MariaDB 10.6 (FOR UPDATE SKIP LOCKED)"),
    "mysql": ((8, 0), "MySQL 8.0 (FOR UPDATE SKIP LOCKED)"),
    "sqlite": ((3, 35), "SQLite 3.35 (UPDATE ... RETURNING)"),
}


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
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigurationError(
            "prefix must be 1 to 40 letters, digits or underscores, not starting with a "
            f"digit (it names tables and indexes), got {prefix!r}"
        )
    outbox_name, inbox_name = f"{prefix}_outbox", f"{prefix}_inbox"
    if outbox_name in metadata.tables and inbox_name in metadata.tables:
        return metadata.tables[outbox_name], metadata.tables[inbox_name]
    mysql_options: dict[str, Any] = {
        f"{dialect}_{option}": value
        for dialect in ("mysql", "mariadb")
        for option, value in (
            ("engine", "InnoDB"),
            ("charset", "utf8mb4"),
            ("collate", "utf8mb4_bin"),
        )
    }
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
        **mysql_options,
    )
    sa.Index(f"{outbox_name}_available", outbox.c.available_at, outbox.c.id)
    sa.Index(
        f"{outbox_name}_key",
        outbox.c.destination,
        outbox.c.key,
        outbox.c.id,
        mysql_length={"key": _KEY_INDEX_PREFIX},
        mariadb_length={"key": _KEY_INDEX_PREFIX},
    )
    inbox = sa.Table(
        inbox_name,
        metadata,
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("envelope_id", sa.String(36), primary_key=True),
        sa.Column("processed_at", sa.Double(), nullable=False),
        **mysql_options,
    )
    return outbox, inbox


class SQLAlchemyOutbox:
    """The transactional outbox in the application's database, through a SQLAlchemy engine.

    Implements ``eventbus.typing.OutboxStore``. ``bus.transaction()`` takes a ``Session``
    or a ``Connection`` of this engine; ``bus.atransaction()`` an ``AsyncSession`` or an
    ``AsyncConnection`` of an async engine on the same database (not on SQLite yet).
    Durable handlers may take ``session: Session`` (their writes and their inbox mark
    commit together). ``close()`` leaves the engine, which is the application's, open.
    """

    resource_type: type[Any] = Session

    def __init__(
        self,
        engine: Engine,
        *,
        metadata: sa.MetaData | None = None,
        prefix: str = "eventbus",
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        create: bool = True,
        notify: bool = True,
    ) -> None:
        """Use the outbox tables on ``engine`` (by default creating them if missing).

        ``metadata``: the application's, to define the tables in (see ``outbox_tables``).
        ``batch``, ``lease`` and ``poll_interval`` set how it is relayed: rows claimed at
        once, seconds a relay holds a claim before another may take it over (renewed
        while a handler runs), and seconds between polls when no commit woke the relay.
        ``notify`` (PostgreSQL): a write also sends ``NOTIFY`` on commit, and relays
        ``LISTEN``, so a commit in any process wakes them at once. It only wakes them
        early: polling stays what makes delivery correct (notifications are lost while
        nobody listens, and do not pass PgBouncer in transaction mode). Turn it off
        there, or to spare the commit its notification lock.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")
        for name, number in (("lease", lease), ("poll_interval", poll_interval)):
            if not (number > 0 and math.isfinite(number)):
                raise ConfigurationError(f"{name} must be > 0 seconds, got {number!r}")
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                "SQLAlchemyOutbox takes a sqlalchemy.Engine (create_engine(...)), got "
                f"{type(engine).__qualname__}; async engines are not supported"
            )
        self.batch = batch
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        self._engine = engine
        self._url = engine.url.render_as_string(hide_password=True)
        self._password = engine.url.password
        self._kind = _kind_of(engine)
        self._lock = threading.Lock()
        self._closed = False
        self._materialize = False
        if self._kind == "sqlite":
            _check_sqlite(engine)
            _install_sqlite_transactions(engine)
            # The relay's and the handlers' transactions take SQLite's write lock at
            # BEGIN: a deferred one that reads then writes fails at once with SQLITE_BUSY.
            self._writer: Engine = engine.execution_options(**{_IMMEDIATE: True})
            self._reader: Engine = engine
            self._handler_engine: Engine = self._writer
        else:
            # Short relay transactions at READ COMMITTED: no gap locks (MariaDB), no
            # serialization failures (an engine configured SERIALIZABLE).
            self._writer = engine.execution_options(isolation_level="READ COMMITTED")
            self._reader = self._writer
            self._handler_engine = engine
        # So that a durable publish outside bus.transaction() while this thread holds a
        # transaction on this database is refused (open_transaction), and so that a
        # joined session's commit runs what waits for it.
        watch_sessions()
        watch_engine(engine)
        self.outbox, self.inbox = outbox_tables(
            sa.MetaData() if metadata is None else metadata, prefix=prefix
        )
        self._prefix = prefix
        self._notify = notify and self._kind == "postgresql"
        self._channel = f"{prefix}_outbox"
        self._now: sa.ColumnElement[float] = sa.literal_column(
            _NOW_SQL[self._kind],
            sa.Double(),
        )
        self._insert = sa.insert(self.outbox).values(created_at=self._now, available_at=self._now)
        self._notifying: dict[int, sa.TextClause] = {}
        # Statements the relay runs per batch, built once so SQLAlchemy compiles them once.
        inbox, outbox = self.inbox, self.outbox
        self._seen = sa.select(inbox.c.handler, inbox.c.envelope_id).where(
            sa.tuple_(inbox.c.handler, inbox.c.envelope_id).in_(
                sa.bindparam("pairs", expanding=True)
            )
        )
        self._complete = sa.delete(outbox).where(
            outbox.c.lease_owner == sa.bindparam("owner"),
            outbox.c.id.in_(sa.bindparam("ids", expanding=True)),
        )
        self._mark_many = self._mark_statement()
        self._complete_pg = self._complete_with_arrays() if self._kind == "postgresql" else ""
        self._claims: dict[int, sa.Update] = {}
        self._prepare(create=create)

    def __repr__(self) -> str:
        return f"SQLAlchemyOutbox({self._url!r}, prefix={self._prefix!r})"

    @property
    def engine(self) -> Engine:
        """The application's engine this outbox lives on."""
        return self._engine

    def _prepare(self, *, create: bool) -> None:
        """Check the server can run the claim; put SQLite in WAL; create the tables."""
        with self._guard("connect to the database"), self._engine.connect() as opened:
            connection = opened.execution_options(isolation_level="AUTOCOMMIT")
            dialect = connection.dialect
            version = dialect.server_version_info or ()
            kind = "mariadb" if getattr(dialect, "is_mariadb", False) else self._kind
            needed, label = _MINIMUM_VERSIONS[kind]
            if tuple(version[:2]) < needed:
                shown = ".".join(map(str, version))
                raise ConfigurationError(f"the outbox needs {label} or later, got {shown}")
            self._materialize = kind == "postgresql" and tuple(version[:1]) >= (12,)
            if self._kind == "sqlite":
                mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
                if str(mode).lower() != "wal":
                    connection.exec_driver_sql("PRAGMA journal_mode = WAL")
        if create:
            self._create()
        else:
            self._check_columns()

    def create_schema(self) -> None:
        """Create the outbox and inbox tables if they do not exist."""
        self._check_open("create the outbox tables")
        self._create()

    def schema_sql(self) -> str:
        """The DDL of both tables and their indexes for this engine's database, for
        applications that manage their own migrations (without Alembic)."""
        dialect = self._engine.dialect
        statements: list[str] = []
        for table in (self.outbox, self.inbox):
            statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
            statements.extend(
                str(CreateIndex(index).compile(dialect=dialect)).strip()
                for index in sorted(table.indexes, key=lambda index: str(index.name))
            )
        if self._kind == "postgresql":
            statements.append(self._fillfactor_sql())
        return "".join(f"{statement};\n" for statement in statements)

    def migration_sql(self) -> str:
        """The statements that bring an outbox table of an earlier release up to date on
        this engine's database (for applications that manage their own migrations)."""
        return "".join(f"{statement};\n" for statement in self._add_column_sql(_ADDED_COLUMNS))

    def _add_column_sql(self, names: Iterable[str]) -> list[str]:
        dialect = self._engine.dialect
        columns = [self.outbox.c[name] for name in names]
        return [
            f"ALTER TABLE {self.outbox.name} ADD COLUMN {column.name} "
            f"{column.type.compile(dialect=dialect)} NULL"
            for column in columns
        ]

    def _missing_columns(self, connection: Connection) -> list[str]:
        """The added columns an existing outbox table lacks (none if there is no table)."""
        inspector = sa.inspect(connection)
        if not inspector.has_table(self.outbox.name):
            return []
        found = {column["name"] for column in inspector.get_columns(self.outbox.name)}
        return [name for name in _ADDED_COLUMNS if name not in found]

    def _add_missing_columns(self, connection: Connection) -> None:
        for statement in self._add_column_sql(self._missing_columns(connection)):
            connection.exec_driver_sql(statement)

    def _check_columns(self) -> None:
        """With ``create=False``: refuse an outbox table of an earlier release."""
        with self._guard("read the outbox schema"), self._engine.connect() as connection:
            missing = self._missing_columns(connection)
        if missing:
            raise OutboxError(
                f"the outbox table {self.outbox.name} on {self._url} lacks the column(s) "
                f"{', '.join(missing)}, which this version of eventbus needs. Add them with "
                f"your migrations: {' '.join(self.migration_sql().split())} (or open "
                "SQLAlchemyOutbox with create=True, which adds them)"
            )

    def _create(self) -> None:
        """Create the tables unless they exist, also when processes start together.

        ``create_all`` looks, then creates: two processes opening the outbox at once on a
        fresh database both look, and all but one fail. On PostgreSQL they take turns on
        an advisory lock held for the transaction; elsewhere a failed creation is forgiven
        when, looking again, the tables are there (another process made them).
        """
        try:
            with self._guard("create the outbox tables"), self._writer.begin() as connection:
                if self._kind == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"),
                        {"key": _lock_key(self.outbox.name)},
                    )
                new = self._kind == "postgresql" and not sa.inspect(connection).has_table(
                    self.outbox.name
                )
                self.outbox.metadata.create_all(connection, tables=[self.outbox, self.inbox])
                if new:  # a table the application made keeps its own storage settings
                    connection.exec_driver_sql(self._fillfactor_sql())
                # A table of an earlier release gets the columns added since (under the
                # advisory lock on PostgreSQL, the write lock on SQLite).
                self._add_missing_columns(connection)
        except OutboxError:
            with self._writer.connect() as connection:
                inspector = sa.inspect(connection)
                if not all(inspector.has_table(t.name) for t in (self.outbox, self.inbox)):
                    raise
                if self._missing_columns(connection):
                    raise  # not a creation that raced another process's: a real failure

    def _fillfactor_sql(self) -> str:
        """PostgreSQL: leave half of each outbox page free. The relay updates every row
        once (its lease) before deleting it; with room on the page, that update is a HOT
        one, which writes no index entries: a claim of 200 rows then writes a quarter of
        the WAL (45 KB instead of 181 KB), and takes about half as long. The outbox is a
        queue, its rows short-lived, so the space costs little."""
        return f"ALTER TABLE {self.outbox.name} SET (fillfactor = {_FILLFACTOR})"

    # -- the publisher's side ----------------------------------------------------------

    def write(self, connection: Any, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` through the application's ``Session`` or ``Connection``, in its
        transaction: one multi-row INSERT (split only when very large)."""
        self._check_open("write to the outbox")
        with self._guard("write to the outbox"):
            joined = self._joined(connection, "write to the outbox")
            if not rows:
                return
            if self._notify:
                # One round trip for the rows and the notification: the INSERT in a
                # data-modifying CTE, then pg_notify (sent by PostgreSQL at COMMIT only).
                for chunk in _chunks(rows):
                    joined.execute(self._notifying_insert(len(chunk)), _numbered(chunk))
                return
            # One compiled statement, reused: the rows go as executemany parameters,
            # which SQLAlchemy sends as multi-row VALUES ("insertmanyvalues"). Building
            # .values([...]) per call cost a statement compilation per transaction.
            for chunk in _chunks(rows):
                joined.execute(self._insert, [_parameters(row) for row in chunk])

    async def awrite(self, resource: Any, rows: Sequence[PendingRow]) -> None:
        """``write`` through the application's ``AsyncSession`` or ``AsyncConnection``, in
        its transaction: the same statements, awaited."""
        what = "write to the outbox"
        self._check_open(what)
        with self._guard(what):
            joined = await self._ajoined(resource, what)
            if not rows:
                return
            if self._notify:
                for chunk in _chunks(rows):
                    await joined.execute(self._notifying_insert(len(chunk)), _numbered(chunk))
                return
            for chunk in _chunks(rows):
                await joined.execute(self._insert, [_parameters(row) for row in chunk])

    def _notifying_insert(self, count: int) -> sa.TextClause:
        statement = self._notifying.get(count)
        if statement is None:
            now = _NOW_SQL[self._kind]
            values = ", ".join(
                f"(:envelope_id_{n}, :name_{n}, :destination_{n}, :key_{n}, :payload_{n}, "
                f"{now}, {now})"
                for n in range(count)
            )
            # Table and channel names are ours (a checked prefix); every value is bound.
            table = self.outbox.name
            sql = (
                f"WITH written AS (INSERT INTO {table} (envelope_id, name, destination, key, "
                f"payload, created_at, available_at) VALUES {values} RETURNING 1) "
                f"SELECT pg_notify('{self._channel}', '')"
            )
            statement = sa.text(sql).bindparams(
                *(sa.bindparam(f"payload_{n}", type_=sa.LargeBinary()) for n in range(count))
            )
            self._notifying[count] = statement
        return statement

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever a write commits anywhere (PostgreSQL ``LISTEN``).

        Returns a function that stops listening, or None when this database has no
        notifications (or ``notify=False``). A dropped listening connection is opened
        again after a pause; meanwhile polling carries on.
        """
        if not self._notify:
            return None
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(wake, stop), name="eventbus-listen", daemon=True
        )
        thread.start()

        def stop_listening() -> None:
            # Wait for the listener to close its connection (it looks every 0.5 s), so
            # nothing is left open when the relay, and then the application, stops.
            stop.set()
            thread.join(timeout=5)

        return stop_listening

    def _listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                raw = self._engine.raw_connection()
                try:
                    driver: Any = raw.driver_connection
                    driver.autocommit = True
                    driver.execute(f'LISTEN "{self._channel}"')
                    while not stop.is_set():
                        for _ in driver.notifies(timeout=0.5, stop_after=1):
                            wake()
                finally:
                    raw.invalidate()  # a LISTENing connection must not go back to the pool
            except Exception:
                logger.warning(
                    "the outbox listener on %s lost its connection; polling meanwhile",
                    self._url,
                    exc_info=True,
                )
                stop.wait(self.poll_interval)

    def write_now(self, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` in a transaction of their own (a publish outside any scope)."""
        with self._begin("write to the outbox") as connection:
            self.write(connection, rows)

    # -- the relay's side --------------------------------------------------------------

    def claim(self, *, owner: str, batch: int, lease: float) -> list[ClaimedRow]:
        """Lease up to ``batch`` available rows, oldest first, at most one per key (on
        PostgreSQL each also says whether its destination's inbox holds its envelope)."""
        seen = self._kind == "postgresql"
        with self._begin("claim outbox rows") as connection:
            if self._kind == "mysql":  # MariaDB too
                found = self._claim_in_two(connection, owner, batch, lease)
            else:
                found = self._claim_in_one(connection, owner, batch, lease)
        # Rows unpacked by position (the order of _CLAIMED): a Row's attributes by name
        # cost a lookup each, which shows on batches of hundreds.
        rows = [
            ClaimedRow(
                id=int(row[0]),
                envelope_id=uuid.UUID(row[1]),
                name=row[2],
                destination=row[3],
                key=row[4],
                payload=bytes(row[5]),
                attempts=int(row[6]),
                created_at=float(row[7]),
                first_failed_at=None if row[8] is None else float(row[8]),
                seen=bool(row[9]) if seen else None,
            )
            for row in found
        ]
        rows.sort(key=lambda row: row.id)
        return rows

    def _claimable(self, batch: int, *, only_id: bool) -> sa.Select[Any]:
        """The oldest due, unleased rows whose key has no earlier row left (in any state)."""
        now = self._now
        mine = self.outbox.alias("o")
        earlier = self.outbox.alias("p")
        blocked = (
            sa.select(earlier.c.id)
            .where(
                earlier.c.destination == mine.c.destination,
                earlier.c.key == mine.c.key,
                earlier.c.id < mine.c.id,
            )
            .exists()
        )
        columns = [mine.c.id] if only_id else [mine.c[name] for name in _CLAIMED]
        return (
            sa.select(*columns)
            .where(
                mine.c.available_at <= now,
                sa.or_(mine.c.lease_until.is_(None), mine.c.lease_until < now),
                sa.or_(mine.c.key.is_(None), ~blocked),
            )
            .order_by(mine.c.id)
            .limit(batch)
            .with_for_update(skip_locked=True)  # rendered by PostgreSQL and MariaDB only
        )

    def _claim_in_one(
        self, connection: Connection, owner: str, batch: int, lease: float
    ) -> Sequence[Any]:
        """PostgreSQL and SQLite: one UPDATE of the rows the SELECT picked, RETURNING them.

        On PostgreSQL the SELECT is a materialised CTE, run exactly once: as ``id IN
        (SELECT ...)``, a nested-loop plan (the planner's choice on a table whose
        statistics say it is empty) runs the locking subquery again for each outer row;
        forced, that leased 30 rows for a batch of 2. SQLite runs an uncorrelated IN
        subquery once.
        """
        statement = self._claims.get(batch)
        if statement is None:
            statement = self._claims[batch] = self._claim_statement(batch)
        if self._kind == "postgresql":
            # Once its statistics say most rows pass the filter, the planner prefers a
            # sequential scan of the whole table and a sort (it cannot see that the
            # first rows in id order are the claimable ones): measured on 4,000 rows and
            # 1,000 keys, 14.9 ms a claim against 2.8 ms by the primary key, which stops
            # at the batch's last row. SET LOCAL ends with this short transaction.
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return connection.execute(statement, {"owner": owner, "lease": float(lease)}).all()

    def _claim_statement(self, batch: int) -> sa.Update:
        """The claim of ``_claim_in_one``, built once per batch size (building it cost
        more per call than SQLAlchemy's cached compilation saves)."""
        table = self.outbox
        claimable = self._claimable(batch, only_id=True)
        if self._kind == "postgresql":
            picked = claimable.cte("eventbus_claimable")
            if self._materialize:  # PostgreSQL >= 12 may inline a CTE; older ones never do
                picked = picked.prefix_with("MATERIALIZED")
            chosen = table.c.id == picked.c.id
        else:
            chosen = table.c.id.in_(claimable)
        returned: list[sa.ColumnElement[Any]] = [table.c[name] for name in _CLAIMED]
        if self._kind == "postgresql":
            # Whether the inbox holds the envelope already: spares the relay a statement.
            # OFFSET 0 keeps PostgreSQL from turning the EXISTS into a hashed subplan, a
            # scan of the whole inbox per claim (its choice while the inbox has no
            # statistics); with it, each row is one probe of the inbox's primary key.
            # (Not on SQLite, which plans this subquery in RETURNING as an inbox scan.)
            inbox = self.inbox
            returned.append(
                sa.select(inbox.c.handler)
                .where(
                    inbox.c.handler == table.c.destination,
                    inbox.c.envelope_id == table.c.envelope_id,
                )
                .offset(0)
                .exists()
                .label("seen")
            )
        lease: sa.BindParameter[float] = sa.bindparam("lease", type_=sa.Double())
        return (
            sa.update(table)
            .where(chosen)
            .values(
                lease_owner=sa.bindparam("owner", type_=sa.String()), lease_until=self._now + lease
            )
            .returning(*returned)
        )

    def _claim_in_two(
        self, connection: Connection, owner: str, batch: int, lease: float
    ) -> Sequence[Any]:
        """MariaDB/MySQL (no UPDATE ... RETURNING): lock the rows, then lease them, in the
        same short transaction."""
        found = connection.execute(self._claimable(batch, only_id=False)).all()
        if found:
            table = self.outbox
            connection.execute(
                sa.update(table)
                .where(table.c.id.in_([row.id for row in found]))
                .values(lease_owner=owner, lease_until=self._now + float(lease))
            )
        return found

    def complete(
        self,
        ids: Iterable[int],
        *,
        owner: str,
        processed: Sequence[tuple[str, uuid.UUID]] = (),
    ) -> int:
        """Delete delivered rows that ``owner`` still holds; returns how many.

        ``processed`` (handler, envelope id) pairs are written to the inbox in the same
        transaction, so a row and its mark go together (in a fixed order, so two relays
        marking the same pairs cannot deadlock).
        """
        ids = list(ids)
        if not ids:
            return 0
        pairs = sorted({(handler, _uuid_text(envelope_id)) for handler, envelope_id in processed})
        with self._begin("complete outbox rows") as connection:
            if self._complete_pg:
                result = connection.exec_driver_sql(
                    self._complete_pg, _completion_parameters(ids, owner, pairs)
                )
                return int(result.rowcount)
            if pairs:
                # executemany of one statement built once (sent as multi-row VALUES):
                # building the INSERT with literal values compiled it on every call.
                connection.execute(
                    self._mark_many,
                    [
                        {"handler": handler, "envelope_id": envelope_id}
                        for handler, envelope_id in pairs
                    ],
                )
            result = connection.execute(self._complete, {"owner": owner, "ids": ids})
            return int(result.rowcount)

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool:
        """Put a failed row back, available again in ``delay`` seconds (fenced)."""
        table = self.outbox
        with self._begin("reschedule an outbox row") as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.id == row_id, table.c.lease_owner == owner)
                .values(
                    attempts=attempts,
                    available_at=self._now + float(delay),
                    lease_owner=None,
                    lease_until=None,
                    last_error=redact(error)[:_ERROR_LENGTH],
                    # The first failure's time, stamped once and kept by later reschedules.
                    first_failed_at=sa.func.coalesce(table.c.first_failed_at, self._now),
                )
            )
            return int(result.rowcount) == 1

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int:
        """Extend the lease of rows still being delivered."""
        ids = list(ids)
        if not ids:
            return 0
        table = self.outbox
        with self._begin("renew outbox leases") as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.lease_owner == owner, table.c.id.in_(ids))
                .values(lease_until=self._now + float(lease))
            )
            return int(result.rowcount)

    def status(self) -> OutboxStatus:
        """Counts and ages, for operators."""
        table, now = self.outbox, self._now
        with self._begin("read the outbox status", self._reader) as connection:
            total, in_flight, delayed, oldest = connection.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(sa.case((table.c.lease_until >= now, 1), else_=0)),
                    sa.func.sum(sa.case((table.c.available_at > now, 1), else_=0)),
                    now - sa.func.min(table.c.created_at),
                ).select_from(table)
            ).one()
            by_name = {
                name: int(count)
                for name, count in connection.execute(
                    sa.select(table.c.name, sa.func.count())
                    .group_by(table.c.name)
                    .order_by(table.c.name)
                )
            }
        return OutboxStatus(
            pending=int(total),
            in_flight=int(in_flight or 0),
            delayed=int(delayed or 0),
            oldest_age=None if oldest is None else max(0.0, float(oldest)),
            by_name=by_name,
        )

    # -- the inbox -----------------------------------------------------------------------

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        """Whether ``handler`` already processed ``envelope_id``."""
        inbox = self.inbox
        with self._begin("read the inbox", self._reader) as connection:
            found = connection.execute(
                sa.select(inbox.c.handler).where(
                    inbox.c.handler == handler, inbox.c.envelope_id == str(envelope_id)
                )
            ).first()
        return found is not None

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        """Which of the (handler, envelope id) pairs the inbox already holds."""
        found: set[tuple[str, uuid.UUID]] = set()
        with self._begin("read the inbox", self._reader) as connection:
            for start in range(0, len(pairs), _CHUNK_ROWS):
                chunk = [
                    (handler, str(envelope_id))
                    for handler, envelope_id in pairs[start : start + _CHUNK_ROWS]
                ]
                for handler, envelope_id in connection.execute(self._seen, {"pairs": chunk}):
                    found.add((handler, uuid.UUID(envelope_id)))
        return found

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        """Record that ``handler`` processed ``envelope_id``; False if it already had.

        With ``connection`` (a ``Session`` or ``Connection``), the INSERT joins its open
        transaction (the handler's own writes), so effects and mark commit together. A
        concurrent mark of the same pair waits for that transaction, then finds it.
        """
        statement = self._insert_marks([{"handler": handler, "envelope_id": str(envelope_id)}])
        if connection is not None:
            self._check_open("write the inbox")
            with self._guard("write the inbox"):
                joined = self._joined(connection, "write the inbox")
                return int(joined.execute(statement).rowcount) == 1
        with self._begin("write the inbox") as own:
            return int(own.execute(statement).rowcount) == 1

    def _complete_with_arrays(self) -> str:
        """PostgreSQL: write the inbox marks and delete the completed rows in one statement
        (a data-modifying CTE always runs), each list bound as one array. The marks go in
        the order given (sorted), so two relays marking the same pairs cannot deadlock."""
        outbox, inbox, now = self.outbox.name, self.inbox.name, _NOW_SQL["postgresql"]
        return (
            f"WITH marked AS (INSERT INTO {inbox} (handler, envelope_id, processed_at) "
            f"SELECT (%(handlers)s::varchar[])[m.handler], m.envelope_id, {now} "
            "FROM unnest(%(which)s::int[], %(envelopes)s::varchar[]) "
            "WITH ORDINALITY AS m(handler, envelope_id, n) ORDER BY m.n "
            "ON CONFLICT DO NOTHING) "
            f"DELETE FROM {outbox} WHERE lease_owner = %(owner)s AND id = ANY(%(ids)s::bigint[])"
        )

    def _mark_statement(self) -> sa.Insert:
        """INSERT one inbox row (bound handler and envelope_id), skipping existing ones."""
        statement: sa.Insert
        values = {"processed_at": self._now}
        if self._kind == "postgresql":
            statement = postgresql.insert(self.inbox).values(values).on_conflict_do_nothing()
        elif self._kind == "sqlite":
            statement = sqlite.insert(self.inbox).values(values).on_conflict_do_nothing()
        else:
            statement = sa.insert(self.inbox).values(values).prefix_with("IGNORE")
        return statement

    def _insert_marks(self, marks: list[dict[str, str]]) -> sa.Insert:
        """INSERT inbox rows, skipping those already there; its rowcount is what it added."""
        values = [{**mark, "processed_at": self._now} for mark in marks]
        statement: sa.Insert
        if self._kind == "postgresql":
            statement = postgresql.insert(self.inbox).values(values).on_conflict_do_nothing()
        elif self._kind == "sqlite":
            statement = sqlite.insert(self.inbox).values(values).on_conflict_do_nothing()
        else:
            # MariaDB/MySQL: IGNORE also turns other errors into warnings, but the values
            # are bounded by the core (handler names <= 200 characters, UUIDs).
            statement = sa.insert(self.inbox).values(values).prefix_with("IGNORE")
        # An INSERT's rowcount is kept only when asked (SQLAlchemy >= 2.0.28).
        return statement.execution_options(preserve_rowcount=True)

    @contextmanager
    def handler_transaction(self) -> Iterator[Session]:
        """A ``Session`` in a transaction of its own, for a durable handler that takes one.

        Commits on a clean exit, rolls back on an exception. On SQLite it begins
        IMMEDIATE: the write lock is held while the handler runs, so keep such handlers
        short.
        """
        self._check_open("open a handler transaction")
        with Session(self._handler_engine) as session, session.begin():
            yield session

    def transaction_control(self, resource: object) -> TransactionControl | None:
        """How ``bus.transaction()`` drives a ``Session`` (also behind a
        ``scoped_session``) or a ``Connection`` (else None)."""
        resource = _unscoped(resource)
        if isinstance(resource, Session):
            self._check_bind(resource, "bus.transaction()")
            return _SessionControl(resource, self.outbox, immediate=self._kind == "sqlite")
        if isinstance(resource, Connection):
            self._check_bind(resource, "bus.transaction()")
            return _ConnectionControl(resource, immediate=self._kind == "sqlite")
        return None

    def async_transaction_control(self, resource: object) -> AsyncTransactionControl | None:
        """How ``bus.atransaction()`` drives an ``AsyncSession`` or an ``AsyncConnection``
        (else None)."""
        asyncio = _asyncio()
        if asyncio is None:
            return None
        resource = _unscoped(resource)
        if isinstance(resource, asyncio.AsyncSession):
            self._check_async_bind(resource, "bus.atransaction()")
            return _AsyncControl(resource)
        if isinstance(resource, asyncio.AsyncConnection):
            self._check_async_bind(resource, "bus.atransaction()")
            return _AsyncControl(resource)
        return None

    def open_transaction(self) -> Session | Connection | None:
        """A session or connection on this outbox's database with a transaction that this
        thread or task began and that is still open, or None. A durable publish outside
        ``bus.transaction()`` is refused while there is one: its row would commit on the
        side. (Async engines are seen once ``bus.atransaction()`` has met them; every
        session, sync or async, is seen from the start.)"""
        mine = _database(self._engine.url)
        for resource in open_resources():
            engine = _engine_of(resource, self.outbox)
            if engine is not None and _database(engine.url) == mine:
                return resource
        return None

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further work. The engine is the application's: it stays open."""
        with self._lock:
            self._closed = True

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise OutboxError(f"cannot {what}: the outbox on {self._url} is closed")

    def _check_bind(self, resource: Session | Connection, what: str) -> Engine:
        """The engine ``resource`` runs on; it must be this outbox's kind of database (on
        SQLite, this very engine: its transactions are set up by listeners on it)."""
        if isinstance(resource, Session):
            try:
                bind = resource.get_bind(clause=self.outbox)
            except sa_exc.UnboundExecutionError as exc:
                raise ConfigurationError(
                    f"{what} needs a Session bound to an engine: Session({self._url!r} engine)"
                ) from exc
            engine = bind.engine if isinstance(bind, Connection) else bind
        else:
            engine = resource.engine
        if _kind_of(engine) != self._kind:
            raise ConfigurationError(
                f"{what} got a {type(resource).__qualname__} on a {engine.dialect.name} "
                f"database, but the outbox is on {self._url}: use a session of that engine"
            )
        if self._kind == "sqlite" and engine.pool is not self._engine.pool:
            raise ConfigurationError(
                f"{what} got a {type(resource).__qualname__} of another SQLite engine; on "
                "SQLite, use the engine given to SQLAlchemyOutbox (it sets up BEGIN "
                "IMMEDIATE and savepoints on that engine)"
            )
        return engine

    def _check_async_bind(self, resource: AsyncSession | AsyncConnection, what: str) -> None:
        """``resource`` must run on an async engine for this outbox's database (the same
        URL, the driver and the password aside)."""
        kind = type(resource).__qualname__
        if self._kind == "sqlite":
            raise ConfigurationError(
                f"{what} does not take a {kind} on SQLite yet: use a Session of the "
                "outbox's engine with bus.transaction()"
            )
        if isinstance(resource, _asyncio().AsyncSession):
            try:
                bind = resource.sync_session.get_bind(clause=self.outbox)
            except sa_exc.UnboundExecutionError as exc:
                raise ConfigurationError(
                    f"{what} needs an AsyncSession bound to an async engine: "
                    f"AsyncSession(create_async_engine({self._url!r}))"
                ) from exc
            engine = bind.engine if isinstance(bind, Connection) else bind
        else:
            engine = cast("AsyncConnection", resource).sync_engine
        if _database(engine.url) != _database(self._engine.url):
            theirs = engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"{what} got a {kind} on {theirs}, but the outbox is on {self._url}: use "
                "an async engine on the outbox's database"
            )
        watch_engine(engine)  # its connections' transactions are seen from now on

    async def _ajoined(self, resource: object, what: str) -> AsyncConnection:
        """The async connection of the caller's AsyncSession or AsyncConnection."""
        asyncio = _asyncio()
        resource = _unscoped(resource)
        connection: AsyncConnection
        if asyncio is not None and isinstance(resource, asyncio.AsyncSession):
            self._check_async_bind(resource, what)
            connection = await resource.connection(bind_arguments={"clause": self.outbox})
        elif asyncio is not None and isinstance(resource, asyncio.AsyncConnection):
            self._check_async_bind(resource, what)
            connection = resource
        else:
            raise ConfigurationError(
                f"cannot {what} asynchronously through a {type(resource).__qualname__}: "
                "SQLAlchemyOutbox takes a sqlalchemy.ext.asyncio.AsyncSession or "
                "AsyncConnection"
            )
        sync = connection.sync_connection
        if sync is not None and _autocommits(sync, self._kind):
            raise ConfigurationError(
                f"cannot {what} through a connection in AUTOCOMMIT mode: the rows would "
                "commit at once, whatever becomes of the application's transaction. Use a "
                "session or connection of an engine without isolation_level='AUTOCOMMIT'"
            )
        return connection

    def _joined(self, resource: object, what: str) -> Connection:
        """The connection of the caller's Session or Connection, in its transaction."""
        resource = _unscoped(resource)
        if isinstance(resource, Session):
            self._check_bind(resource, what)
            connection = resource.connection(bind_arguments={"clause": self.outbox})
        elif isinstance(resource, Connection):
            self._check_bind(resource, what)
            connection = resource
        else:
            raise ConfigurationError(
                f"cannot {what} through a {type(resource).__qualname__}: SQLAlchemyOutbox "
                "takes a sqlalchemy.orm.Session or a sqlalchemy.engine.Connection"
            )
        if _autocommits(connection, self._kind):
            raise ConfigurationError(
                f"cannot {what} through a connection in AUTOCOMMIT mode: the rows would "
                "commit at once, whatever becomes of the application's transaction. Use a "
                "session or connection of an engine without isolation_level='AUTOCOMMIT'"
            )
        return connection

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Database errors become OutboxErrors naming the operation (never the password)."""
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot {what} in {self._url}: {self._reason(exc)}") from exc

    @contextmanager
    def _begin(self, what: str, engine: Engine | None = None) -> Iterator[Connection]:
        """A short transaction of the relay's own; committed on a clean exit."""
        self._check_open(what)
        with self._guard(what), (engine or self._writer).begin() as connection:
            yield connection

    def _reason(self, exc: sa_exc.SQLAlchemyError) -> str:
        """The driver's message, without the statement and its parameters (payloads)."""
        if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
            reason = f"{type(exc.orig).__name__}: {exc.orig}"
        elif isinstance(exc, sa_exc.StatementError):
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
        else:
            reason = f"{type(exc).__name__}: {exc}"
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason


class _SessionControl:
    """``bus.transaction(session)``: the session's transaction, savepoints by begin_nested;
    a transaction the application began is joined, and its commit heard (Session events)."""

    def __init__(self, session: Session, table: sa.Table, *, immediate: bool) -> None:
        self._session = session
        self._table = table
        self._immediate = immediate

    def in_transaction(self) -> bool:
        return self._session.in_transaction()

    def begin(self) -> None:
        self._session.begin()
        if self._immediate:
            # Procure the connection now, so SQLite's write lock is taken at BEGIN (or
            # the busy timeout runs out here, leaving the session as it was).
            try:
                connection = self._session.connection(
                    bind_arguments={"clause": self._table}, execution_options={_IMMEDIATE: True}
                )
                _check_sqlite_began(connection)
            except BaseException:
                self._session.rollback()
                raise

    def commit(self) -> None:
        self._session.commit()

    def rollback(self) -> None:
        self._session.rollback()

    def savepoint(self) -> object:
        return self._session.begin_nested()

    def release(self, savepoint: object) -> None:
        cast("SessionTransaction", savepoint).commit()

    def rollback_to(self, savepoint: object) -> None:
        cast("SessionTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        return functools.partial(after_session_commit, self._session)


class _ConnectionControl:
    """``bus.transaction(connection)``: Core transactions, savepoints by begin_nested."""

    def __init__(self, connection: Connection, *, immediate: bool) -> None:
        self._connection = connection
        self._immediate = immediate

    def in_transaction(self) -> bool:
        return self._connection.in_transaction()

    def begin(self) -> None:
        connection = self._connection
        if not self._immediate:
            connection.begin()
            return
        connection.execution_options(**{_IMMEDIATE: True})
        try:
            connection.begin()
            _check_sqlite_began(connection)
        except BaseException:
            connection.rollback()  # the busy timeout ran out: leave it as it was
            raise
        finally:
            connection.execution_options(**{_IMMEDIATE: False})

    def commit(self) -> None:
        self._connection.commit()

    def rollback(self) -> None:
        self._connection.rollback()

    def savepoint(self) -> object:
        return self._connection.begin_nested()

    def release(self, savepoint: object) -> None:
        cast("sa.NestedTransaction", savepoint).commit()

    def rollback_to(self, savepoint: object) -> None:
        cast("sa.NestedTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        """None: Core has no event after a COMMIT succeeded (its ``commit`` event comes
        before the COMMIT is sent, which can still fail)."""
        return None


class _AsyncControl:
    """``bus.atransaction(resource)`` for an AsyncSession or an AsyncConnection: both
    spell begin, commit, rollback and begin_nested (savepoints) the same way."""

    def __init__(self, resource: AsyncSession | AsyncConnection) -> None:
        self._resource = resource

    def in_transaction(self) -> bool:
        return self._resource.in_transaction()

    async def begin(self) -> None:
        await self._resource.begin()

    async def commit(self) -> None:
        await self._resource.commit()

    async def rollback(self) -> None:
        await self._resource.rollback()

    async def savepoint(self) -> object:
        return await self._resource.begin_nested()

    async def release(self, savepoint: object) -> None:
        await cast("AsyncSessionTransaction | AsyncTransaction", savepoint).commit()

    async def rollback_to(self, savepoint: object) -> None:
        await cast("AsyncSessionTransaction | AsyncTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        """An AsyncSession's commit is heard through its sync session's events; an
        AsyncConnection's cannot be (see ``_ConnectionControl.owner_commit``)."""
        sync_session = getattr(self._resource, "sync_session", None)
        if isinstance(sync_session, Session):
            return functools.partial(after_session_commit, sync_session)
        return None


# -- helpers ---------------------------------------------------------------------------


def _asyncio() -> Any:
    """``sqlalchemy.ext.asyncio``, or None when it cannot load (greenlet is missing): then
    no resource can be an AsyncSession."""
    try:
        import sqlalchemy.ext.asyncio as module  # noqa: PLC0415 - needs greenlet
    except ImportError:
        return None
    return module


def _unscoped(resource: object) -> object:
    """The session a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) or an
    ``async_scoped_session`` stands for in this thread or task; anything else as it is."""
    if isinstance(resource, scoped_session):
        return resource()
    asyncio = _asyncio()
    if asyncio is not None and isinstance(resource, asyncio.async_scoped_session):
        return resource()
    return resource


def _engine_of(resource: Session | Connection, table: sa.Table) -> Engine | None:
    """The engine ``resource`` runs ``table``'s statements on, or None if it has none."""
    if isinstance(resource, Connection):
        return resource.engine
    try:
        bind = resource.get_bind(clause=table)
    except sa_exc.UnboundExecutionError:
        return None
    return bind.engine if isinstance(bind, Connection) else bind


def _database(url: URL) -> tuple[object, ...]:
    """What names a database in a URL: not the driver, not the password."""
    name = url.get_backend_name()
    return ("mysql" if name == "mariadb" else name, url.username, url.host, url.port, url.database)


def _autocommits(connection: Connection, kind: str) -> bool:
    """Whether statements on ``connection`` commit one by one (AUTOCOMMIT)."""
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    if kind == "sqlite":
        return False  # the driver's flag is off on purpose; _sqlite_begin emits BEGIN
    detect = getattr(connection.dialect, "detect_autocommit_setting", None)  # SQLAlchemy 2.1
    raw = connection.connection.dbapi_connection
    return detect is not None and raw is not None and bool(detect(raw))


def _kind_of(engine: Engine) -> str:
    name = engine.dialect.name
    if name not in ("postgresql", "mysql", "mariadb", "sqlite"):
        raise ConfigurationError(
            f"SQLAlchemyOutbox serves PostgreSQL, MariaDB, MySQL and SQLite, not {name}"
        )
    return "mysql" if name == "mariadb" else name


def _chunks(rows: Sequence[PendingRow]) -> Iterator[Sequence[PendingRow]]:
    start, size = 0, 0
    for index, row in enumerate(rows):
        if index > start and (
            index - start >= _CHUNK_ROWS or size + len(row.payload) > _CHUNK_BYTES
        ):
            yield rows[start:index]
            start, size = index, 0
        size += len(row.payload)
    yield rows[start:]


def _check_sqlite(engine: Engine) -> None:
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


def _sqlite_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
    """pysqlite must not BEGIN on its own: SQLAlchemy's begin listener does it."""
    del record
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Connection) -> None:
    """Emit BEGIN (IMMEDIATE when asked) where SQLAlchemy begins a transaction."""
    options = connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and raw.isolation_level is not None:
        # A pooled connection whose isolation level SQLAlchemy reset (it sets "" again).
        raw.isolation_level = None
    connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_IMMEDIATE) else "BEGIN")


def _install_sqlite_transactions(engine: Engine) -> None:
    """SQLAlchemy's documented pysqlite workaround, once per engine."""
    if not sa.event.contains(engine, "connect", _sqlite_connect):
        sa.event.listen(engine, "connect", _sqlite_connect)
    if not sa.event.contains(engine, "begin", _sqlite_begin):
        sa.event.listen(engine, "begin", _sqlite_begin)


def _check_sqlite_began(connection: Connection) -> None:
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        raise ConfigurationError(
            "this SQLite connection did not begin a transaction: it was made before the "
            "SQLAlchemyOutbox set up its engine. Create the outbox first, then sessions"
        )


def _uuid_text(value: uuid.UUID) -> str:
    """The canonical text of an envelope id (the inbox's form); anything else that names
    a UUID is normalised, and what does not raises ValueError."""
    return str(value if type(value) is uuid.UUID else uuid.UUID(str(value)))


def _completion_parameters(
    ids: list[int], owner: str, pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    """The parameters of the PostgreSQL completion. Ids, the marks' envelope ids and the
    index of each mark's handler go as array literals in one text each: psycopg adapts a
    Python list element by element in Python, which cost about 1 ms for a batch of 200
    (more than the statement). Those values need no quoting: digits, and UUIDs in their
    canonical text. Handler names may hold any character: psycopg adapts their (short)
    list of distinct names."""
    handlers: dict[str, int] = {}
    for handler, _ in pairs:
        handlers.setdefault(handler, len(handlers) + 1)  # PostgreSQL arrays count from 1
    return {
        "handlers": list(handlers),
        "which": _array_literal(str(handlers[handler]) for handler, _ in pairs),
        "envelopes": _array_literal(envelope_id for _, envelope_id in pairs),
        "owner": owner,
        "ids": _array_literal(str(int(row_id)) for row_id in ids),
    }


def _array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL array literal of items that need no quoting."""
    return "{" + ",".join(items) + "}"


def _parameters(row: PendingRow) -> dict[str, Any]:
    return {
        "envelope_id": str(row.envelope_id),
        "name": row.name,
        "destination": row.destination,
        "key": row.key,
        "payload": row.payload,
    }


def _numbered(rows: Sequence[PendingRow]) -> dict[str, Any]:
    """The rows' parameters, suffixed by position, for one multi-row VALUES."""
    return {
        f"{name}_{n}": value
        for n, row in enumerate(rows)
        for name, value in _parameters(row).items()
    }


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a table name (PostgreSQL)."""
    digest = hashlib.blake2b(f"eventbus:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
