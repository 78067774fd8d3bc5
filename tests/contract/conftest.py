"""The ``outbox`` fixture: every outbox store behind one face, for the contract suite.

``outbox`` is the store of the test's ``backend``: the stdlib ``SQLiteOutbox`` for
``sqlite3``, the store a third party would write on the public surface alone
(tests/third_party.py) for ``third-party``, ``SQLAlchemyOutbox`` for ``sqlite``,
``postgresql`` and ``mariadb`` (servers that do not answer skip, or fail under CI=true:
see tests/conftest.py), ``DjangoOutbox`` for ``django-sqlite`` and ``django-postgresql``
(tests/django/contract.py); the contract module parametrises ``backend`` over all seven. The
harness does, per store, what the protocol leaves to the application: open an
application transaction, write an application table in it, read the outbox table raw,
open the same tables again (another relay), or empty ones (a migration). Tests switch on
``outbox.backend``'s capabilities, never on its name.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from eventbus.outbox import SQLiteOutbox
from eventbus.typing import OutboxStore
from tests.third_party import ThirdPartyOutbox

if TYPE_CHECKING:
    import sqlalchemy as sa


class Transaction:
    """An application transaction: ``resource`` is what ``store.write`` takes."""

    def __init__(self, resource: Any, commit: Callable[[], None], rollback: Callable[[], None]):
        self.resource = resource
        self.commit = commit
        self.rollback = rollback


class Harness:
    """What the contract needs of a store's database, beyond the OutboxStore protocol."""

    backend: Any  # tests/conftest.py's Backend: the name and the capabilities
    model_examples: int
    """Hypothesis examples for the model relay: each costs round trips to a server."""
    known_bugs: dict[str, str] = {}
    """Contract tests this store fails today, by name, with why: they run as strict
    xfails (``expect_bug``), so a fix shows up as a failure to remove the entry."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._opened: list[OutboxStore] = []
        self._store: OutboxStore | None = None

    @property
    def store(self) -> OutboxStore:
        """The test's store, opened (and its tables created) on first use."""
        if self._store is None:
            self._store = self.open()
        return self._store

    def open(self, **options: Any) -> OutboxStore:
        """Another store on the same tables, on connections of its own (another relay)."""
        return self._keep(self._open(**options))

    def open_elsewhere(self, *, schema_sql: bool) -> OutboxStore:
        """A store opened with ``create=False`` on another database (or table prefix),
        where the tables are made by the published DDL if ``schema_sql``, else missing."""
        return self._keep(self._open_elsewhere(schema_sql=schema_sql))

    def open_earlier_release(self, *, create: bool) -> OutboxStore:
        """A store on outbox tables as an earlier release made them (no
        ``first_failed_at``), holding one row that release wrote (``{"n":0}``, due now)."""
        return self._keep(self._open_earlier_release(create=create))

    def expect_bug(self, request: pytest.FixtureRequest, bug: str) -> None:
        """Mark the running test a strict xfail if this store has ``bug``."""
        reason = self.known_bugs.get(bug)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    def _keep(self, store: OutboxStore) -> OutboxStore:
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()

    def _open(self, **options: Any) -> OutboxStore:
        raise NotImplementedError

    def _open_elsewhere(self, *, schema_sql: bool) -> OutboxStore:
        raise NotImplementedError

    def _open_earlier_release(self, *, create: bool) -> OutboxStore:
        raise NotImplementedError

    def begin(self) -> Transaction:
        """Begin an application transaction on a connection (or session) of its own."""
        raise NotImplementedError

    def create_orders(self) -> None:
        """Create the application's ``orders`` table, beside the outbox."""
        raise NotImplementedError

    def insert_order(self, resource: Any, order_id: int) -> None:
        """INSERT into ``orders`` through ``resource`` (a transaction's, or a handler's)."""
        raise NotImplementedError

    def orders(self) -> list[int]:
        """The committed order ids."""
        raise NotImplementedError

    def outbox_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        """The outbox table's ``columns``, read raw, in id order."""
        raise NotImplementedError


class SQLite3Harness(Harness):
    """``SQLiteOutbox`` on a file; the application uses plain sqlite3 connections."""

    model_examples = 25

    def __init__(self, backend: Any, directory: Path) -> None:
        super().__init__(backend)
        self.path = directory / "app.db"
        self._directory = directory
        self._connections: list[sqlite3.Connection] = []

    def _make(self, path: Path, **options: Any) -> OutboxStore:
        """The store under test on the SQLite file ``path``."""
        return SQLiteOutbox(path, **options)

    def _open(self, **options: Any) -> OutboxStore:
        return self._make(self.path, **options)

    def _open_elsewhere(self, *, schema_sql: bool) -> OutboxStore:
        path = self._directory / f"elsewhere-{len(self._opened)}.db"
        if schema_sql:
            connection = sqlite3.connect(path)
            try:
                connection.executescript(SQLiteOutbox.schema_sql())
            finally:
                connection.close()
        return self._make(path, create=False)

    def _open_earlier_release(self, *, create: bool) -> OutboxStore:
        path = self._directory / "earlier-release.db"
        if not path.exists():
            with closing(sqlite3.connect(path)) as connection:
                connection.executescript(SQLiteOutbox.schema_sql())
                connection.executescript(
                    "ALTER TABLE eventbus_outbox DROP COLUMN first_failed_at;"
                    "INSERT INTO eventbus_outbox (envelope_id, name, destination, key, "
                    "payload, created_at, available_at) VALUES ("
                    f"'{uuid.uuid4()}', 'order.placed', 'h', NULL, X'7B226E223A307D', 0, 0);"
                )
        return self._make(path, create=create)

    def _connect(self) -> sqlite3.Connection:
        # Transactions managed explicitly, as the store's docs ask of an application.
        connection = sqlite3.connect(self.path, isolation_level=None)
        self._connections.append(connection)
        return connection

    def begin(self) -> Transaction:
        connection = self._connect()
        self.store.configure(connection)  # type: ignore[attr-defined]
        connection.execute("BEGIN IMMEDIATE")
        return Transaction(
            connection,
            commit=lambda: connection.execute("COMMIT"),
            rollback=lambda: connection.execute("ROLLBACK"),
        )

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    def create_orders(self) -> None:
        self._query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")

    def insert_order(self, resource: Any, order_id: int) -> None:
        resource.execute("INSERT INTO orders (id) VALUES (?)", (order_id,))

    def orders(self) -> list[int]:
        return [n for (n,) in self._query("SELECT id FROM orders ORDER BY id")]

    def outbox_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        return self._query(f"SELECT {', '.join(columns)} FROM eventbus_outbox ORDER BY id")

    def close(self) -> None:
        super().close()
        for connection in self._connections:
            connection.close()


class ThirdPartyHarness(SQLite3Harness):
    """``ThirdPartyOutbox`` on the same file and tables: a store written against
    ``eventbus.typing`` alone passes what the built-in ones pass."""

    def _make(self, path: Path, **options: Any) -> OutboxStore:
        return ThirdPartyOutbox(path, **options)


class SQLAlchemyHarness(Harness):
    """``SQLAlchemyOutbox`` on tables named by the test's prefix; the application uses
    ORM sessions. Each ``open`` gets an engine (a pool) of its own."""

    model_examples = 8

    def __init__(
        self, backend: Any, engine: sa.Engine, make_engine: Callable[..., sa.Engine], prefix: str
    ) -> None:
        super().__init__(backend)
        self.engine = engine
        self._make_engine = make_engine
        self.prefix = prefix
        self._sessions: list[Any] = []
        self._orders: sa.Table | None = None

    @property
    def store(self) -> OutboxStore:
        if self._store is None:  # the test's store is on the test's engine
            self._store = self._keep(self._outbox(self.engine))
        return self._store

    def _outbox(self, engine: sa.Engine, **options: Any) -> OutboxStore:
        from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

        options.setdefault("prefix", self.prefix)
        return SQLAlchemyOutbox(engine, **options)

    def _open(self, **options: Any) -> OutboxStore:
        return self._outbox(self._make_engine(), **options)

    def _open_elsewhere(self, *, schema_sql: bool) -> OutboxStore:
        # Under the test's prefix, so tests/conftest.py drops these tables too.
        prefix = f"{self.prefix}_e{len(self._opened)}"
        engine = self._make_engine()
        if schema_sql:
            ddl = self.store.schema_sql().replace(self.prefix, prefix)  # type: ignore[attr-defined]
            with engine.begin() as connection:
                for statement in ddl.split(";\n"):
                    if statement.strip():
                        connection.exec_driver_sql(statement)
        return self._outbox(engine, prefix=prefix, create=False)

    def _open_earlier_release(self, *, create: bool) -> OutboxStore:
        import sqlalchemy as sa

        prefix = f"{self.prefix}_old"  # dropped at teardown with the test's prefix
        engine = self._make_engine()
        with engine.begin() as connection:
            if not sa.inspect(connection).has_table(f"{prefix}_outbox"):
                ddl = self.store.schema_sql().replace(self.prefix, prefix)  # type: ignore[attr-defined]
                for statement in ddl.split(";\n"):
                    if statement.strip():
                        connection.exec_driver_sql(statement)
                connection.exec_driver_sql(
                    f"ALTER TABLE {prefix}_outbox DROP COLUMN first_failed_at"
                )
                connection.execute(
                    sa.text(
                        f"INSERT INTO {prefix}_outbox (envelope_id, name, destination, "
                        "payload, created_at, available_at, attempts) "
                        "VALUES (:id, 'order.placed', 'h', :payload, 0, 0, 0)"
                    ),
                    {"id": str(uuid.uuid4()), "payload": b'{"n":0}'},
                )
        return self._outbox(engine, prefix=prefix, create=create)

    def begin(self) -> Transaction:
        from sqlalchemy.orm import Session

        self.store  # noqa: B018 - the outbox sets up the engine before sessions are made
        session = Session(self.engine)
        self._sessions.append(session)
        session.begin()
        return Transaction(session, commit=session.commit, rollback=session.rollback)

    def create_orders(self) -> None:
        import sqlalchemy as sa

        self.store  # noqa: B018 - the outbox sets up the engine before it is used
        self._orders = sa.Table(
            f"{self.prefix}_orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
        )
        with self.engine.begin() as connection:
            self._orders.create(connection)

    def insert_order(self, resource: Any, order_id: int) -> None:
        import sqlalchemy as sa

        assert self._orders is not None, "create_orders() first"
        resource.execute(sa.insert(self._orders).values(id=order_id))

    def orders(self) -> list[int]:
        import sqlalchemy as sa

        assert self._orders is not None, "create_orders() first"
        with self.engine.connect() as connection:
            query = sa.select(self._orders.c.id).order_by(self._orders.c.id)
            return list(connection.execute(query).scalars())

    def outbox_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        import sqlalchemy as sa

        table = self.store.outbox  # type: ignore[attr-defined]
        with self.engine.connect() as connection:
            query = sa.select(*(table.c[c] for c in columns)).order_by(table.c.id)
            return [tuple(row) for row in connection.execute(query)]

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        super().close()


@pytest.fixture
def outbox(backend: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Harness]:
    """One of the outbox stores, with what the contract needs around it."""
    harness: Harness
    if backend.name == "sqlite3":
        harness = SQLite3Harness(backend, tmp_path)
    elif backend.name == "third-party":
        harness = ThirdPartyHarness(backend, tmp_path)
    elif backend.name.startswith("django-"):
        from tests.django.contract import DjangoHarness  # imports this module: not at the top

        harness = DjangoHarness(backend, request.getfixturevalue("fresh_database"))
    else:
        harness = SQLAlchemyHarness(
            backend,
            request.getfixturevalue("engine"),
            request.getfixturevalue("make_engine"),
            request.getfixturevalue("prefix"),
        )
    yield harness
    harness.close()


@pytest.fixture
def app(outbox: Harness, api: str) -> Iterator[Any]:
    """An application on the test's store, for the bus-over-an-outbox contract:
    ``api`` (parametrised with ``backend``) is how it opens transactions, ``sync`` or
    ``async`` (tests/contract/bus_over_outbox.py)."""
    from tests.contract.bus_over_outbox import make_app

    made = make_app(outbox, api)
    yield made
    made.close()
