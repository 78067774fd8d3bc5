"""``bus.atransaction(session)`` joins an ``AsyncSession`` transaction the application began.

The async FastAPI pattern: a dependency yields an AsyncSession inside ``session.begin()``
and commits (or rolls back, when the route raises) after the route. The route's
``bus.atransaction(session)`` joins that transaction: a commit delivers once, a rollback
nothing; an ``apublish`` with no scope inside the open transaction is refused, with
nothing written. On PostgreSQL (skipped when it does not answer, failed under CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import sqlalchemy as sa

from eventbus import EventBus, EventRegistry, RetryPolicy, TransactionScopeError, event

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from tests.conftest import Backend

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

REGISTRY = EventRegistry()


@event("joined_async.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@event("joined_async.order_paid", registry=REGISTRY)
class OrderPaid:
    """A durable handler only."""

    number: int


class BoomError(Exception):
    pass


@attrs.frozen
class Seen:
    inline: list[int] = attrs.field(factory=list)
    durable: list[int] = attrs.field(factory=list)
    after: list[int] = attrs.field(factory=list)


@pytest.fixture
def postgresql(backend: Backend) -> str:
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

    del orders
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05, lease=5.0)
    made = EventBus(registry=REGISTRY, outbox=outbox, retry=RetryPolicy())
    made.start()  # a runtime thread of its own, not the test's short-lived loop
    yield made
    made.close()
    outbox.close()


@pytest.fixture
def seen(bus: EventBus) -> Seen:
    record = Seen()
    bus.subscribe(OrderPlaced, name="inline")(lambda e: record.inline.append(e.number))
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: record.durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: record.after.append(e.number)
    )
    bus.subscribe(OrderPaid, name="paid", delivery="durable")(
        lambda e: record.durable.append(e.number)
    )
    return record


def run_async(postgresql: str, body: Callable[[AsyncEngine], Awaitable[None]]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine(postgresql, connect_args={"connect_timeout": 3})
        try:
            await body(engine)
        finally:
            await engine.dispose()

    asyncio.run(main())


def settle(bus: EventBus) -> None:
    bus.drain(timeout=10)
    time.sleep(0.2)
    bus.drain(timeout=10)


def numbers_in(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(table.c.number)).scalars())


def outbox_rows(engine: sa.Engine, bus: EventBus) -> int:
    outbox: Any = bus.outbox
    with engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(outbox.outbox)
        return int(connection.execute(count).scalar_one())


def begun(async_engine: AsyncEngine) -> Callable[[], AsyncIterator[AsyncSession]]:
    """FastAPI's async dependency: a session whose transaction ends after the route."""
    from sqlalchemy.ext.asyncio import AsyncSession

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(async_engine) as session, session.begin():
            yield session

    return get_session


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_a_fastapi_async_dependency_that_yields_inside_session_begin(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, *, postgresql: str, fails: bool
) -> None:
    async def create_order(session: AsyncSession) -> None:
        async with bus.atransaction(session) as same:
            assert same is session
            await session.execute(sa.insert(orders).values(number=1))
            await bus.apublish(OrderPlaced(number=1))
        assert session.in_transaction()  # joined: the dependency ends it
        assert outbox_rows(engine, bus) == 0
        assert seen.after == []
        if fails:
            raise BoomError

    async def body(async_engine: AsyncEngine) -> None:
        # What FastAPI does: the route's exception is thrown into the dependency.
        async with contextlib.asynccontextmanager(begun(async_engine))() as session:
            await create_order(session)

    if fails:
        with pytest.raises(BoomError):
            run_async(postgresql, body)
    else:
        run_async(postgresql, body)
    settle(bus)

    expected = [] if fails else [1]
    assert seen.inline == [1]
    assert seen.durable == expected
    assert seen.after == expected
    assert numbers_in(engine, orders) == expected
    assert outbox_rows(engine, bus) == 0


@pytest.mark.parametrize("statement_first", [True, False], ids=["after-a-statement", "at-once"])
def test_an_apublish_with_no_scope_inside_an_open_async_transaction_is_refused(
    bus: EventBus,
    seen: Seen,
    engine: sa.Engine,
    orders: sa.Table,
    *,
    postgresql: str,
    statement_first: bool,
) -> None:
    async def body(async_engine: AsyncEngine) -> None:
        async with contextlib.asynccontextmanager(begun(async_engine))() as session:
            if statement_first:
                await session.execute(sa.insert(orders).values(number=1))
            with pytest.raises(
                TransactionScopeError, match=r"async with bus\.atransaction\(session\)"
            ):
                await bus.apublish(OrderPlaced(number=1))
            if not statement_first:
                await session.execute(sa.insert(orders).values(number=1))

    run_async(postgresql, body)
    settle(bus)

    assert seen == Seen()  # no handler ran, not even the inline one
    assert numbers_in(engine, orders) == [1]
    assert outbox_rows(engine, bus) == 0


def test_a_task_started_inside_a_transaction_publishes_on_its_own(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    """A task copies its parent's context, but not its transaction: its publish with no
    scope is its own, and commits its own row."""

    async def body(async_engine: AsyncEngine) -> None:
        async with contextlib.asynccontextmanager(begun(async_engine))() as session:
            await session.execute(sa.insert(orders).values(number=1))
            await asyncio.create_task(bus.apublish(OrderPlaced(number=2)))
            assert outbox_rows(engine, bus) + len(seen.durable) >= 1  # committed already

    run_async(postgresql, body)
    settle(bus)

    assert seen.durable == [2]
    assert numbers_in(engine, orders) == [1]


def test_a_nested_atransaction_inside_a_joined_one_is_a_savepoint(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    async def body(async_engine: AsyncEngine) -> None:
        async with contextlib.asynccontextmanager(begun(async_engine))() as session:
            async with bus.atransaction(session):
                await session.execute(sa.insert(orders).values(number=1))
                await bus.apublish(OrderPlaced(number=1))
                with pytest.raises(BoomError):  # noqa: PT012
                    async with bus.atransaction(session):
                        await session.execute(sa.insert(orders).values(number=2))
                        await bus.apublish(OrderPlaced(number=2))
                        raise BoomError
                await bus.apublish(OrderPlaced(number=3))

    run_async(postgresql, body)
    settle(bus)

    assert sorted(seen.durable) == [1, 3]
    assert sorted(seen.after) == [1, 3]
    assert numbers_in(engine, orders) == [1]


def test_an_async_connection_already_in_a_transaction_is_joined(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, postgresql: str
) -> None:
    async def body(async_engine: AsyncEngine) -> None:
        async with async_engine.begin() as connection:
            await connection.execute(sa.insert(orders).values(number=1))
            async with bus.atransaction(connection):
                await bus.apublish(OrderPaid(number=1))
                # An AsyncConnection cannot report its commit: after-commit is refused.
                with pytest.raises(TransactionScopeError, match="cannot tell the bus when"):
                    await bus.apublish(OrderPlaced(number=2))
        # Met once by bus.atransaction(), the engine's transactions are seen from then on.
        async with async_engine.begin() as connection:
            await connection.execute(sa.select(1))
            with pytest.raises(TransactionScopeError, match=r"atransaction\(connection\)"):
                await bus.apublish(OrderPaid(number=3))

    run_async(postgresql, body)
    settle(bus)

    assert seen.durable == [1]
    assert seen.after == []
    assert numbers_in(engine, orders) == [1]
