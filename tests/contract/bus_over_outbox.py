"""The application around a bus, for the bus-over-an-outbox contract (test_bus_over_outbox.py).

An ``App`` wraps the contract's outbox harness (tests/contract/conftest.py) with what a
test of durable delivery does as an application would: make buses on the store's tables,
open its own transactions (``run``), keep two tables of its own beside the outbox
(``orders``, written by the application; ``effects``, written by handlers that take the
store's resource), and read the outbox and the inbox raw.

Transactions are written once, as ``async def body(tx)``, for every way an application
opens one: ``bus.transaction(connection)`` on a sqlite3 connection, on an ORM ``Session``,
or ``bus.atransaction(session)`` on an ``AsyncSession``. A sync application never
suspends: its body is driven to its end in the calling thread, with no event loop, so it
is the plain sync code a user writes; the async one runs under ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from eventbus import EventBus, EventRegistry, event

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tests.contract.conftest import Harness

REGISTRY = EventRegistry()
TABLES = ("orders", "effects")
T = TypeVar("T")


@event("bus_over_outbox.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int
    note: str = ""


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, here, without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("a sync application's transaction awaited something that suspends")


class Tx:
    """One application transaction's resource, and what a test does with it."""

    def __init__(self, app: App, bus: EventBus, resource: Any) -> None:
        self.app = app
        self.bus = bus
        self.resource = resource

    def transaction(self) -> AbstractAsyncContextManager[None]:
        """``bus.transaction`` (or ``atransaction``) on the resource: nested, a savepoint."""
        raise NotImplementedError

    async def insert(self, table: str, number: int) -> None:
        raise NotImplementedError

    async def publish(self, published: object, **options: Any) -> None:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        """Wait inside the transaction, as the application's own work would."""
        raise NotImplementedError

    def in_transaction(self) -> bool:
        raise NotImplementedError


class SyncTx(Tx):
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self.bus.transaction(self.resource) as same:
            assert same is self.resource
            yield

    async def insert(self, table: str, number: int) -> None:
        self.app.insert(self.resource, table, number)

    async def publish(self, published: object, **options: Any) -> None:
        self.bus.publish(published, **options)

    async def pause(self, seconds: float) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - driven without a loop: a sync application

    def in_transaction(self) -> bool:
        if isinstance(self.resource, sqlite3.Connection):
            return self.resource.in_transaction
        return bool(self.resource.in_transaction())


class AsyncTx(Tx):
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        async with self.bus.atransaction(self.resource) as same:
            assert same is self.resource
            yield

    async def insert(self, table: str, number: int) -> None:
        import sqlalchemy as sa

        await self.resource.execute(sa.insert(self.app.table(table)).values(number=number))

    async def publish(self, published: object, **options: Any) -> None:
        await self.bus.apublish(published, **options)

    async def pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def in_transaction(self) -> bool:
        return bool(self.resource.in_transaction())


class App:
    """An application on one outbox store: its buses, transactions and tables."""

    def __init__(self, outbox: Harness) -> None:
        self.outbox = outbox
        self._buses: list[EventBus] = []

    @property
    def resource_type(self) -> type[Any]:
        """What the store gives handlers that take their own transaction."""
        return self.outbox.store.resource_type  # type: ignore[attr-defined, no-any-return]

    def make_bus(self, *, store: dict[str, Any] | None = None, **options: Any) -> EventBus:
        """A bus on a store of its own over the test's tables (another relay, for the
        database); ``store`` options override the quick polling the tests want."""
        settings: dict[str, Any] = {"poll_interval": 0.05, "lease": 5.0}
        settings.update(store or {})
        made = EventBus(registry=REGISTRY, outbox=self._open(**settings), **options)
        self._buses.append(made)
        return made

    def _open(self, **settings: Any) -> Any:
        return self.outbox.open(**settings)

    def run(self, bus: EventBus, body: Callable[[Tx], Awaitable[None]]) -> None:
        """Run ``body`` with an application transaction's resource of its own."""
        raise NotImplementedError

    def create_tables(self) -> None:
        raise NotImplementedError

    def insert(self, resource: Any, table: str, number: int) -> None:
        """INSERT through ``resource``: a transaction's, or a handler's."""
        raise NotImplementedError

    def numbers(self, table: str) -> list[int]:
        """The committed numbers of ``table``, sorted."""
        raise NotImplementedError

    def inbox_rows(self, handler: str | None = None) -> int:
        raise NotImplementedError

    def delete_outbox_rows(self) -> None:
        """Delete every outbox row, as another relay's completion does."""
        raise NotImplementedError

    def outbox_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        return self.outbox.outbox_rows(*columns)

    def waiting(self) -> list[tuple[Any, ...]]:
        """The outbox rows, oldest first: (destination, attempts, lease owner, due in s)."""
        now = time.time()
        rows = self.outbox_rows("destination", "attempts", "lease_owner", "available_at")
        return [(d, a, o, float(due) - now) for d, a, o, due in rows]

    def close(self) -> None:
        for bus in self._buses:
            bus.close()


class SQLite3App(App):
    """Plain sqlite3 connections (autocommit, transactions managed by the bus)."""

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.outbox.path, isolation_level=None, timeout=10.0)  # type: ignore[attr-defined]

    def run(self, bus: EventBus, body: Callable[[Tx], Awaitable[None]]) -> None:
        connection = self._connect()
        try:
            drive(body(SyncTx(self, bus, connection)))  # type: ignore[arg-type]
        finally:
            connection.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            return connection.execute(sql, params).fetchall()
        finally:
            connection.close()

    def create_tables(self) -> None:
        self.outbox.store  # noqa: B018 - the store makes the database file first
        for table in TABLES:
            self._query(f"CREATE TABLE {table} (number INTEGER)")

    def insert(self, resource: Any, table: str, number: int) -> None:
        resource.execute(f"INSERT INTO {table} VALUES (?)", (number,))

    def numbers(self, table: str) -> list[int]:
        return [n for (n,) in self._query(f"SELECT number FROM {table} ORDER BY number")]

    def inbox_rows(self, handler: str | None = None) -> int:
        if handler is None:
            return int(self._query("SELECT COUNT(*) FROM eventbus_inbox")[0][0])
        sql = "SELECT COUNT(*) FROM eventbus_inbox WHERE handler = ?"
        return int(self._query(sql, (handler,))[0][0])

    def delete_outbox_rows(self) -> None:
        self._query("DELETE FROM eventbus_outbox")


class SQLAlchemyApp(App):
    """ORM sessions on an engine of the application's (pooled for many writers)."""

    def __init__(self, outbox: Any) -> None:
        super().__init__(outbox)
        if outbox.backend.concurrent_writers:  # room for many writers at once
            self.engine = outbox._make_engine(pool_size=60, max_overflow=10)
        else:  # SQLite: sessions on the outbox's engine, which sets up BEGIN IMMEDIATE
            self.engine = outbox.engine
        self._tables: dict[str, sa.Table] = {}

    def _open(self, **settings: Any) -> Any:
        """A store on the application's engine, as an application sets one up."""
        return self.outbox._keep(self.outbox._outbox(self.engine, **settings))

    def table(self, name: str) -> sa.Table:
        assert name in self._tables, "create_tables() first"
        return self._tables[name]

    def run(self, bus: EventBus, body: Callable[[Tx], Awaitable[None]]) -> None:
        from sqlalchemy.orm import Session

        self.outbox.store  # noqa: B018 - the outbox sets up the engine before sessions are made
        with Session(self.engine) as session:
            drive(body(SyncTx(self, bus, session)))  # type: ignore[arg-type]

    def create_tables(self) -> None:
        import sqlalchemy as sa

        self.outbox.store  # noqa: B018 - the outbox sets up the engine before it is used
        metadata = sa.MetaData()
        prefix = self.outbox.prefix  # type: ignore[attr-defined]
        for name in TABLES:
            self._tables[name] = sa.Table(
                f"{prefix}_{name}", metadata, sa.Column("number", sa.Integer)
            )
        metadata.create_all(self.engine)

    def insert(self, resource: Any, table: str, number: int) -> None:
        import sqlalchemy as sa

        resource.execute(sa.insert(self.table(table)).values(number=number))

    def numbers(self, table: str) -> list[int]:
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            return sorted(connection.execute(sa.select(self.table(table).c.number)).scalars())

    def inbox_rows(self, handler: str | None = None) -> int:
        import sqlalchemy as sa

        inbox = self.outbox.store.inbox  # type: ignore[attr-defined]
        query = sa.select(sa.func.count()).select_from(inbox)
        if handler is not None:
            query = query.where(inbox.c.handler == handler)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def delete_outbox_rows(self) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as connection:
            connection.execute(sa.delete(self.outbox.store.outbox))  # type: ignore[attr-defined]


class AsyncSessionApp(SQLAlchemyApp):
    """``AsyncSession`` on an async engine (PostgreSQL); ``bus.atransaction``."""

    def __init__(self, outbox: Any) -> None:
        try:
            import sqlalchemy.ext.asyncio  # noqa: F401
        except ImportError as error:  # greenlet missing
            pytest.skip(f"async SQLAlchemy is not installed: {error}")
        super().__init__(outbox)

    def make_bus(self, *, store: dict[str, Any] | None = None, **options: Any) -> EventBus:
        made = super().make_bus(store=store, **options)
        # A runtime thread of its own: started lazily inside asyncio.run, the bus would
        # attach to that loop, which closes when the body returns.
        made.start()
        return made

    def run(self, bus: EventBus, body: Callable[[Tx], Awaitable[None]]) -> None:
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

        self.outbox.store  # noqa: B018
        url = self.outbox.backend.url

        async def main() -> None:
            engine = create_async_engine(url, connect_args={"connect_timeout": 3})
            try:
                async with AsyncSession(engine) as session:
                    await body(AsyncTx(self, bus, session))
            finally:
                await engine.dispose()

        asyncio.run(main())


def make_app(outbox: Any, api: str) -> App:
    """The application of the test's store: ``api`` is ``sync`` or ``async``."""
    if api == "async":
        return AsyncSessionApp(outbox)
    if outbox.backend.name in ("sqlite3", "third-party"):
        return SQLite3App(outbox)
    return SQLAlchemyApp(outbox)
