"""Durable delivery through the bus on the SQLAlchemy outbox, per database.

``with Session(engine) as session, bus.transaction(session)``: durable rows commit with the
application's writes and are relayed after the commit; a rollback (or a rolled-back
savepoint) drops them with everything else of it. A handler that takes ``session:
Session`` writes in the transaction that records it ran, so an envelope delivered twice
has one effect. On PostgreSQL, many writers at once: every committed event is handled
exactly once and nothing of a rolled-back transaction is.
"""

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
import tenacity
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
from sqlalchemy.orm import Session

from eventbus import Envelope, EventBus, EventRegistry, RetryPolicy, event
from eventbus.outbox import PendingRow

REGISTRY = EventRegistry()


@event("sqlalchemy_durable.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class BoomError(Exception):
    pass


ZERO_WAIT = RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none())


@attrs.frozen
class Tables:
    orders: sa.Table
    effects: sa.Table


@pytest.fixture
def tables(engine: sa.Engine, prefix: str) -> Tables:
    """The application's own tables, beside the outbox."""
    metadata = sa.MetaData()
    made = Tables(
        orders=sa.Table(f"{prefix}_orders", metadata, sa.Column("number", sa.Integer)),
        effects=sa.Table(
            f"{prefix}_effects",
            metadata,
            sa.Column("handler", sa.String(50)),
            sa.Column("number", sa.Integer),
        ),
    )
    metadata.create_all(engine)
    return made


@pytest.fixture
def make_bus(engine: sa.Engine, prefix: str) -> Iterator[Callable[..., EventBus]]:
    """Buses on the test's outbox; each bus, then its outbox, is closed at the end."""
    made: list[tuple[EventBus, SQLAlchemyOutbox]] = []

    def make(on: sa.Engine | None = None, **options: Any) -> EventBus:
        outbox = SQLAlchemyOutbox(on or engine, prefix=prefix, poll_interval=0.05, lease=5.0)
        options.setdefault("retry", ZERO_WAIT)
        bus = EventBus(registry=REGISTRY, outbox=outbox, **options)
        made.append((bus, outbox))
        return bus

    yield make
    for bus, outbox in made:
        bus.close()
        outbox.close()


@pytest.fixture
def bus(make_bus: Callable[..., EventBus], tables: Tables) -> EventBus:
    del tables  # created before the bus, so the test can use them
    return make_bus()


def numbers_in(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(table.c.number)).scalars())


def outbox_rows(engine: sa.Engine, bus: EventBus) -> int:
    outbox = bus.outbox
    assert isinstance(outbox, SQLAlchemyOutbox)
    with engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(outbox.outbox)).scalar_one()
        )


def inbox_rows(engine: sa.Engine, bus: EventBus, handler: str) -> int:
    outbox = bus.outbox
    assert isinstance(outbox, SQLAlchemyOutbox)
    inbox = outbox.inbox
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).where(inbox.c.handler == handler)
            ).scalar_one()
        )


# -- transactions ----------------------------------------------------------------------


def test_a_commit_delivers_to_the_durable_handler_exactly_once(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    got: list[tuple[int, uuid.UUID]] = []

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced, envelope: Envelope) -> None:
        got.append((event.number, envelope.id))

    with Session(engine) as session, bus.transaction(session):
        session.execute(sa.insert(tables.orders).values(number=1))
        bus.publish(OrderPlaced(number=1), key="order-1")
    bus.drain(timeout=10)
    time.sleep(0.2)  # a few more polls: nothing is delivered twice
    bus.drain(timeout=10)

    assert [number for number, _ in got] == [1]
    assert numbers_in(engine, tables.orders) == [1]
    assert outbox_rows(engine, bus) == 0
    assert inbox_rows(engine, bus, "keep") == 1


def test_a_connection_works_as_the_transaction_too(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    with engine.connect() as connection:
        with bus.transaction(connection):
            connection.execute(sa.insert(tables.orders).values(number=1))
            bus.publish(OrderPlaced(number=1))
        with pytest.raises(BoomError), bus.transaction(connection):  # noqa: PT012
            connection.execute(sa.insert(tables.orders).values(number=2))
            bus.publish(OrderPlaced(number=2))
            raise BoomError
        assert not connection.in_transaction()
    bus.drain(timeout=10)

    assert got == [1]
    assert numbers_in(engine, tables.orders) == [1]


def test_a_rolled_back_transaction_publishes_nothing(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    durable: list[int] = []
    after: list[int] = []
    inline: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="inline")(lambda e: inline.append(e.number))
    bus.start()

    with Session(engine) as session:
        with pytest.raises(BoomError), bus.transaction(session):  # noqa: PT012
            session.execute(sa.insert(tables.orders).values(number=1))
            bus.publish(OrderPlaced(number=1))
            bus.publish(OrderPlaced(number=2))
            raise BoomError
        assert not session.in_transaction()

    bus.drain(timeout=10)
    time.sleep(0.2)
    assert durable == []
    assert after == []
    assert inline == [1, 2]  # inline handlers ran in the publish, as function calls do
    assert numbers_in(engine, tables.orders) == []
    assert outbox_rows(engine, bus) == 0
    assert inbox_rows(engine, bus, "durable") == 0


def test_a_rolled_back_savepoint_drops_only_its_own_publishes(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    durable: list[int] = []
    after: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )
    orders = tables.orders

    with Session(engine) as session, bus.transaction(session):
        session.execute(sa.insert(orders).values(number=1))
        bus.publish(OrderPlaced(number=1))
        with pytest.raises(BoomError), bus.transaction(session):  # noqa: PT012
            session.execute(sa.insert(orders).values(number=2))
            bus.publish(OrderPlaced(number=2))
            with bus.transaction(session):  # committed inside the rolled-back one: gone too
                bus.publish(OrderPlaced(number=3))
            raise BoomError
        assert session.in_transaction()  # the outer transaction goes on
        with bus.transaction(session):  # a savepoint released: its publishes stay
            session.execute(sa.insert(orders).values(number=4))
            bus.publish(OrderPlaced(number=4))
        bus.publish(OrderPlaced(number=5))
    bus.drain(timeout=10)

    assert sorted(durable) == [1, 4, 5]
    assert sorted(after) == [1, 4, 5]
    assert numbers_in(engine, orders) == [1, 4]  # the savepoint really rolled back
    assert outbox_rows(engine, bus) == 0


# -- the inbox and the handler's own transaction ---------------------------------------


def test_a_session_handler_has_one_effect_when_its_envelope_is_delivered_twice(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    envelopes: list[Envelope] = []
    calls: list[int] = []

    @bus.subscribe(name="apply", delivery="durable")
    def apply(event: OrderPlaced, envelope: Envelope, session: Session) -> None:
        assert session.in_transaction()
        calls.append(event.number)
        envelopes.append(envelope)
        session.execute(sa.insert(tables.effects).values(handler="apply", number=event.number))

    with Session(engine) as session, bus.transaction(session):
        bus.publish(OrderPlaced(number=1), key="k")
    bus.drain(timeout=10)
    assert calls == [1]

    # The same envelope for the same handler again, twice, as a relay that crashed after
    # committing the handler's transaction but before deleting the row would see it.
    (envelope,) = envelopes
    outbox = bus.outbox
    assert outbox is not None
    payload = bus.codec.encode(envelope)
    again = PendingRow(envelope.id, envelope.name, "apply", envelope.key, payload)
    outbox.write_now([again])
    outbox.write_now([again])
    bus.publish(OrderPlaced(number=2))  # wakes the relay
    bus.drain(timeout=10)

    assert calls == [1, 2]
    assert numbers_in(engine, tables.effects) == [1, 2]
    assert inbox_rows(engine, bus, "apply") == 2
    assert outbox_rows(engine, bus) == 0


def test_a_session_handler_that_raises_leaves_no_partial_writes(
    bus: EventBus, engine: sa.Engine, tables: Tables
) -> None:
    attempts: list[int] = []

    @bus.subscribe(name="flaky", delivery="durable")
    def flaky(event: OrderPlaced, session: Session) -> None:
        attempts.append(event.number)
        session.execute(sa.insert(tables.effects).values(handler="flaky", number=len(attempts)))
        if len(attempts) < 2:
            raise BoomError  # its insert and its inbox mark roll back together

    bus.publish(OrderPlaced(number=7))
    bus.drain(timeout=10)

    assert attempts == [7, 7]
    assert numbers_in(engine, tables.effects) == [2]  # only the attempt that committed
    assert inbox_rows(engine, bus, "flaky") == 1
    assert outbox_rows(engine, bus) == 0


def test_a_durable_publish_outside_any_scope_commits_its_own_row(
    make_bus: Callable[..., EventBus], engine: sa.Engine
) -> None:
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: None)
    writer.publish(OrderPlaced(number=7), key="k")
    assert outbox_rows(engine, writer) == 1  # committed already

    relay = make_bus()
    got: list[int] = []
    relay.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))
    relay.publish(OrderPlaced(number=8))
    relay.drain(timeout=10)
    assert sorted(got) == [7, 8]
    assert outbox_rows(engine, relay) == 0


# -- many writers at once --------------------------------------------------------------


def write_concurrently(
    bus: EventBus, engine: sa.Engine, orders: sa.Table, writers: int
) -> list[int]:
    """``writers`` threads, each its own Session, start together; each inserts an order and
    publishes two events, pausing at random; every tenth rolls back. Returns the numbers
    of the events whose transactions committed."""
    committed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(writers)

    def write(number: int) -> None:
        pause = random.Random(number)
        try:
            start.wait()
            with Session(engine) as session:
                try:
                    with bus.transaction(session):
                        session.execute(sa.insert(orders).values(number=number))
                        time.sleep(pause.uniform(0, 0.02))
                        bus.publish(OrderPlaced(number=number), key=f"k{number % 5}")
                        bus.publish(OrderPlaced(number=number + 1000))
                        time.sleep(pause.uniform(0, 0.03))
                        if number % 10 == 0:
                            raise BoomError
                except BoomError:
                    return
            with lock:
                committed.extend([number, number + 1000])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return committed


def test_concurrent_writers_every_commit_delivered_once_no_rollback_delivered(
    backend: Any,
    make_engine: Callable[..., sa.Engine],
    make_bus: Callable[..., EventBus],
    prefix: str,
) -> None:
    """50 transactions at once, with random small delays, a tenth rolled back: the ledger
    of committed numbers equals the ledger of handled ones, with no duplicates."""
    if not backend.concurrent_writers:
        pytest.skip("SQLite has one writer at a time")
    engine = make_engine(pool_size=60, max_overflow=10)
    metadata = sa.MetaData()
    orders = sa.Table(f"{prefix}_orders", metadata, sa.Column("number", sa.Integer))
    effects = sa.Table(f"{prefix}_effects", metadata, sa.Column("number", sa.Integer))
    metadata.create_all(engine)
    bus = make_bus(engine)
    handled: list[int] = []
    lock = threading.Lock()

    @bus.subscribe(name="count", delivery="durable")
    def count(event: OrderPlaced) -> None:
        with lock:
            handled.append(event.number)

    @bus.subscribe(name="apply", delivery="durable")
    def apply(event: OrderPlaced, session: Session) -> None:
        session.execute(sa.insert(effects).values(number=event.number))

    bus.start()
    committed = write_concurrently(bus, engine, orders, writers=50)
    bus.drain(timeout=30)

    assert len(committed) == 90
    assert numbers_in(engine, orders) == sorted(n for n in committed if n < 1000)
    duplicates = [n for n, times in Counter(handled).items() if times > 1]
    assert duplicates == []
    assert sorted(handled) == sorted(committed)
    assert numbers_in(engine, effects) == sorted(committed)  # exactly once, via the inbox
    assert outbox_rows(engine, bus) == 0


@pytest.mark.parametrize("notify", [True, False])
def test_a_commit_elsewhere_wakes_the_relay_through_notifications(
    backend: Any, engine: sa.Engine, prefix: str, tables: Tables, notify: bool
) -> None:
    """A writer with no relay of its own (another process, in production) commits; a relay
    that polls only every 60 s delivers within seconds when notifications are on."""
    if not backend.notifications:
        pytest.skip("this database cannot wake relays in other processes")
    del tables
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
