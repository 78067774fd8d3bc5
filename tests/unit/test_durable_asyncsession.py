"""``async with bus.atransaction(session)`` on an ``AsyncSession``, on PostgreSQL.

The async twin of ``bus.transaction``: durable rows commit with the application's writes
(through the AsyncSession, awaited) and are relayed after the commit by the unchanged
relay; a rollback, or a rolled-back savepoint, drops what was published inside it;
after-commit handlers wait for the commit. PostgreSQL that does not answer skips these
tests (fails them under CI=true), as in conftest.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import TYPE_CHECKING, Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from eventbus import ConfigurationError, EventBus, EventRegistry, RetryPolicy, event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tests.conftest import Backend

# conftest's ``backend``, on PostgreSQL only: skipped (with the reason) when it does not
# answer, failed under CI=true. ``engine`` is its sync engine; ``{prefix}_*`` tables go.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

CONNECT_ARGS = {"connect_timeout": 3}
REGISTRY = EventRegistry()


@event("asyncsession_durable.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class BoomError(Exception):
    pass


@pytest.fixture
def postgresql(backend: Backend) -> str:
    """The URL of the test's PostgreSQL, for ``create_async_engine``."""
    try:
        import sqlalchemy.ext.asyncio  # noqa: F401
    except ImportError as error:  # greenlet missing
        pytest.skip(f"async SQLAlchemy is not installed: {error}")
    return backend.url


@pytest.fixture
def orders(engine: sa.Engine, prefix: str) -> sa.Table:

    table = sa.Table(f"{prefix}_orders", sa.MetaData(), sa.Column("number", sa.Integer))
    table.metadata.create_all(engine)
    return table


@pytest.fixture
def bus(engine: sa.Engine, prefix: str, orders: sa.Table) -> Iterator[EventBus]:
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

    del orders  # created before the bus
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05, lease=5.0)
    made = EventBus(registry=REGISTRY, outbox=outbox, retry=RetryPolicy())
    # A runtime thread of its own: started lazily inside asyncio.run, the bus would attach
    # to that loop, which closes when the test's body returns.
    made.start()
    yield made
    made.close()  # stops the relay, which waits for its LISTEN connection to close
    outbox.close()


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
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

    outbox = bus.outbox
    assert isinstance(outbox, SQLAlchemyOutbox)
    with engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(outbox.outbox)
        return int(connection.execute(count).scalar_one())


def test_a_commit_delivers_to_the_durable_handler_exactly_once(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    got: list[int] = []
    handler_sessions: list[object] = []

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced, session: Session) -> None:
        handler_sessions.append(session)
        got.append(event.number)

    async def body(async_engine: AsyncEngine) -> None:
        async with AsyncSession(async_engine) as session, bus.atransaction(session) as same:
            assert same is session
            await session.execute(sa.insert(orders).values(number=1))
            await bus.apublish(OrderPlaced(number=1), key="order-1")
            assert outbox_rows(engine, bus) == 0  # buffered: written just before COMMIT
        assert not session.in_transaction()

    run_async(postgresql, body)
    bus.drain(timeout=10)
    time.sleep(0.2)  # a few more polls: nothing is delivered twice
    bus.drain(timeout=10)

    assert got == [1]
    assert all(isinstance(s, Session) for s in handler_sessions)  # sync, as ever
    assert numbers_in(engine, orders) == [1]
    assert outbox_rows(engine, bus) == 0


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


def test_a_rolled_back_transaction_publishes_nothing(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    durable: list[int] = []
    after: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )

    async def body(async_engine: AsyncEngine) -> None:
        async with AsyncSession(async_engine) as session:
            with pytest.raises(BoomError):  # noqa: PT012
                async with bus.atransaction(session):
                    await session.execute(sa.insert(orders).values(number=1))
                    bus.publish(OrderPlaced(number=1))
                    await bus.apublish(OrderPlaced(number=2))
                    raise BoomError
            assert not session.in_transaction()

    run_async(postgresql, body)
    bus.drain(timeout=10)
    time.sleep(0.2)
    assert durable == []
    assert after == []
    assert numbers_in(engine, orders) == []
    assert outbox_rows(engine, bus) == 0


def test_a_rolled_back_nested_transaction_drops_only_its_own_publishes(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    durable: list[int] = []
    after: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )

    async def body(async_engine: AsyncEngine) -> None:
        async with AsyncSession(async_engine) as session, bus.atransaction(session):
            await session.execute(sa.insert(orders).values(number=1))
            await bus.apublish(OrderPlaced(number=1))
            with pytest.raises(BoomError):  # noqa: PT012
                async with bus.atransaction(session):
                    await session.execute(sa.insert(orders).values(number=2))
                    await bus.apublish(OrderPlaced(number=2))
                    async with bus.atransaction(session):  # inside the rolled-back one
                        await bus.apublish(OrderPlaced(number=3))
                    raise BoomError
            assert session.in_transaction()  # the outer transaction goes on
            async with bus.atransaction(session):  # a savepoint released: it stays
                await session.execute(sa.insert(orders).values(number=4))
                await bus.apublish(OrderPlaced(number=4))
            await bus.apublish(OrderPlaced(number=5))

    run_async(postgresql, body)
    bus.drain(timeout=10)

    assert sorted(durable) == [1, 4, 5]
    assert sorted(after) == [1, 4, 5]
    assert numbers_in(engine, orders) == [1, 4]  # the savepoint really rolled back
    assert outbox_rows(engine, bus) == 0


def test_after_commit_handlers_wait_for_the_commit(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    seen: list[list[int]] = []
    ran = threading.Event()

    @bus.subscribe(delivery="after_commit")
    def after(event: OrderPlaced) -> None:
        seen.append(numbers_in(engine, orders))  # what another connection sees by then
        ran.set()

    async def body(async_engine: AsyncEngine) -> None:
        async with AsyncSession(async_engine) as session, bus.atransaction(session):
            await session.execute(sa.insert(orders).values(number=1))
            await bus.apublish(OrderPlaced(number=1))
            await asyncio.sleep(0.2)  # time enough for a handler that did not wait
            assert not ran.is_set()

    run_async(postgresql, body)
    assert ran.wait(10)
    bus.drain(timeout=10)
    assert seen == [[1]]


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


def test_a_store_without_awrite_is_refused_at_entry(postgresql: str) -> None:
    del postgresql  # only for the skip: it needs async SQLAlchemy no more than the rest

    class HalfStore:
        def async_transaction_control(self, resource: object) -> object:
            return object()

    bus = EventBus(registry=REGISTRY, outbox=cast("Any", HalfStore()))  # a store half done

    async def body() -> None:
        with pytest.raises(ConfigurationError, match="no awrite"):
            async with bus.atransaction(object()):
                pass

    try:
        asyncio.run(body())
    finally:
        bus.close()
