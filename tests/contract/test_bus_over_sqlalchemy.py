"""What the bus does only with the SQLAlchemy store, on SQLite, PostgreSQL and MariaDB.

What every store promises the bus (transactions, savepoints, the inbox, retries, batches)
is in test_bus_over_outbox.py, where ORM sessions and ``AsyncSession`` are two of its
applications. This file keeps what only SQLAlchemy has: a ``Connection`` (and an
``AsyncConnection``) as the transaction, the resources ``bus.atransaction`` must refuse,
LISTEN/NOTIFY waking a relay in another process (PostgreSQL), and which resource a
handler may ask of a store once the SQLAlchemy integration is imported.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
from sqlalchemy.orm import Session

from eventbus import ConfigurationError, EventBus, EventRegistry, RetryPolicy, SQLiteOutbox, event
from eventbus.errors import HandlerSignatureError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.conftest import Backend

REGISTRY = EventRegistry()
CONNECT_ARGS = {"connect_timeout": 3}
# conftest's ``backend`` on PostgreSQL only: skipped (with the reason) when it does not
# answer, failed under CI=true.
on_postgresql = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@event("bus_over_sqlalchemy.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class BoomError(Exception):
    pass


@pytest.fixture
def orders(engine: sa.Engine, prefix: str) -> sa.Table:
    """The application's own table, beside the outbox."""
    table = sa.Table(f"{prefix}_orders", sa.MetaData(), sa.Column("number", sa.Integer))
    table.metadata.create_all(engine)
    return table


@pytest.fixture
def bus(engine: sa.Engine, prefix: str, orders: sa.Table) -> Iterator[EventBus]:
    del orders  # created before the bus
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05, lease=5.0)
    made = EventBus(registry=REGISTRY, outbox=outbox, retry=RetryPolicy())
    # A runtime thread of its own: started lazily inside asyncio.run, the bus would attach
    # to that loop, which closes when the test's body returns.
    made.start()
    yield made
    made.close()  # stops the relay, which waits for its LISTEN connection to close
    outbox.close()


@pytest.fixture
def postgresql(backend: Backend) -> str:
    """The URL of the test's PostgreSQL, for ``create_async_engine``."""
    try:
        import sqlalchemy.ext.asyncio  # noqa: F401
    except ImportError as error:  # greenlet missing
        pytest.skip(f"async SQLAlchemy is not installed: {error}")
    return backend.url


def run_async(postgresql: str, body: Callable[[AsyncEngine], Any]) -> None:
    """Run ``body(async_engine)`` in a fresh event loop; the async engine is disposed."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine(postgresql, connect_args=CONNECT_ARGS)
        try:
            await body(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


def numbers_in(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(table.c.number)).scalars())


def outbox_rows(engine: sa.Engine, bus: EventBus) -> int:
    outbox = bus.outbox
    assert isinstance(outbox, SQLAlchemyOutbox)
    with engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(outbox.outbox)
        return int(connection.execute(count).scalar_one())


# -- a Connection as the transaction -----------------------------------------------------


def test_a_connection_works_as_the_transaction_too(
    bus: EventBus, engine: sa.Engine, orders: sa.Table
) -> None:
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    with engine.connect() as connection:
        with bus.transaction(connection):
            connection.execute(sa.insert(orders).values(number=1))
            bus.publish(OrderPlaced(number=1))
        with pytest.raises(BoomError), bus.transaction(connection):  # noqa: PT012
            connection.execute(sa.insert(orders).values(number=2))
            bus.publish(OrderPlaced(number=2))
            raise BoomError
        assert not connection.in_transaction()
    bus.drain(timeout=10)

    assert got == [1]
    assert numbers_in(engine, orders) == [1]


@on_postgresql
def test_an_async_connection_works_as_the_transaction_too(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    async def body(async_engine: AsyncEngine) -> None:
        async with async_engine.connect() as connection:
            async with bus.atransaction(connection):
                await connection.execute(sa.insert(orders).values(number=1))
                await bus.apublish(OrderPlaced(number=1))
            with pytest.raises(BoomError):  # noqa: PT012
                async with bus.atransaction(connection):
                    await connection.execute(sa.insert(orders).values(number=2))
                    await bus.apublish(OrderPlaced(number=2))
                    raise BoomError
            assert not connection.in_transaction()

    run_async(postgresql, body)
    bus.drain(timeout=10)

    assert got == [1]
    assert numbers_in(engine, orders) == [1]


# -- what bus.atransaction refuses -------------------------------------------------------


@on_postgresql
def test_a_resource_it_cannot_drive_is_refused(
    bus: EventBus, engine: sa.Engine, postgresql: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    async def body(async_engine: AsyncEngine) -> None:
        with Session(engine) as session:
            with pytest.raises(ConfigurationError, match=r"bus\.transaction\(\)"):
                async with bus.atransaction(session):
                    pass
        with (
            closing(sqlite3.connect(":memory:")) as raw,
            pytest.raises(ConfigurationError, match="cannot drive a Connection"),
        ):
            async with bus.atransaction(raw):
                pass
        async with AsyncSession() as unbound:  # bound to no engine
            with pytest.raises(ConfigurationError, match="bound to an async engine"):
                async with bus.atransaction(unbound):
                    pass
        from sqlalchemy import make_url
        from sqlalchemy.ext.asyncio import create_async_engine

        elsewhere = create_async_engine(make_url(postgresql).set(database="eventbus_other"))
        try:
            async with AsyncSession(elsewhere) as other:
                with pytest.raises(ConfigurationError, match="on the outbox's database"):
                    async with bus.atransaction(other):
                        pass
        finally:
            await elsewhere.dispose()
        assert async_engine is not None

    run_async(postgresql, body)
    assert outbox_rows(engine, bus) == 0


@on_postgresql
def test_a_session_of_an_autocommit_async_engine_is_refused(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    """Its rows would commit at once, whatever became of the transaction. The engine-wide
    setting shows only in the driver's flag (read through the async adapter)."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    async def body(async_engine: AsyncEngine) -> None:
        autocommit = create_async_engine(
            postgresql, connect_args=CONNECT_ARGS, isolation_level="AUTOCOMMIT"
        )
        try:
            async with AsyncSession(autocommit) as session:
                with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
                    async with bus.atransaction(session):
                        await bus.apublish(OrderPlaced(number=1))
        finally:
            await autocommit.dispose()
        assert async_engine is not None

    run_async(postgresql, body)
    bus.drain(timeout=10)
    assert got == []
    assert outbox_rows(engine, bus) == 0


# -- notifications -----------------------------------------------------------------------


@pytest.mark.parametrize("notify", [True, False])
def test_a_commit_elsewhere_wakes_the_relay_through_notifications(
    backend: Any, engine: sa.Engine, prefix: str, orders: sa.Table, notify: bool
) -> None:
    """A writer with no relay of its own (another process, in production) commits; a relay
    that polls only every 60 s delivers within seconds when notifications are on."""
    if not backend.notifications:
        pytest.skip("this database cannot wake relays in other processes")
    del orders
    relay_outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=60.0, notify=notify)
    writer_outbox = SQLAlchemyOutbox(engine, prefix=prefix, notify=notify)
    relaying = EventBus(registry=REGISTRY, outbox=relay_outbox)
    writer = EventBus(registry=REGISTRY, outbox=writer_outbox, relay=False)
    delivered = threading.Event()
    for bus in (relaying, writer):
        bus.subscribe(OrderPlaced, name="notified", delivery="durable")(
            lambda _event: delivered.set()
        )
    try:
        relaying.start()
        time.sleep(1.0)  # the relay's first (empty) claim is done; now it waits 60 s
        with Session(engine) as session, writer.transaction(session):
            writer.publish(OrderPlaced(number=1))
        assert delivered.wait(10 if notify else 3) is notify
    finally:
        writer.close()
        relaying.close()
        writer_outbox.close()
        relay_outbox.close()


# -- what a handler may take -------------------------------------------------------------


def test_a_handler_must_take_what_the_outbox_gives(tmp_path: Path) -> None:
    """Importing the SQLAlchemy integration does not let a handler of a bus on the stdlib
    store take a Session: what it may take is its own outbox's."""
    store = SQLiteOutbox(tmp_path / "app.db")
    bus = EventBus(registry=REGISTRY, outbox=store, relay=False)
    try:
        with pytest.raises(HandlerSignatureError, match="gives durable handlers a Connection"):

            @bus.subscribe(name="wrong", delivery="durable")
            def wrong(event: OrderPlaced, session: Session) -> None: ...

        assert bus.handlers == ()
    finally:
        bus.close()
        store.close()
