"""``bus.transaction(session)`` joins a transaction the application (or its framework) began.

Frameworks own the session's transaction: a FastAPI dependency yields a session inside
``session.begin()`` (or commits after the yield), Flask-SQLAlchemy hands out a
``scoped_session`` that the view commits and the request's teardown removes, and plain
code writes ``with sessionmaker.begin() as session``. FastAPI and Flask are not
installed: their session patterns are reproduced here as they run them (a FastAPI
request runs a sync dependency's setup, the route and the teardown on worker threads).

In each: a commit delivers every durable and after-commit handler once; a rollback, by
whoever does it, delivers nothing and leaves no outbox row; a durable (or after-commit)
publish with no scope while the transaction is open is refused before any handler runs,
with nothing written. Per database (SQLite, PostgreSQL, MariaDB).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
import pytest
import sqlalchemy as sa
import tenacity
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
from sqlalchemy.orm import Session, registry, scoped_session, sessionmaker

from eventbus import EventBus, EventRegistry, RetryPolicy, TransactionScopeError, event

REGISTRY = EventRegistry()
T = TypeVar("T")


@event("joined.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@event("joined.order_viewed", registry=REGISTRY)
class OrderViewed:
    """An event with an after-commit handler only."""

    number: int


@event("joined.order_paid", registry=REGISTRY)
class OrderPaid:
    """An event with a durable handler only."""

    number: int


class BoomError(Exception):
    pass


@attrs.define(slots=False)  # mapped imperatively by the ORM, which needs a __dict__
class Order:
    number: int


@attrs.frozen
class Seen:
    """What each kind of handler received, by event number."""

    inline: list[int] = attrs.field(factory=list)
    durable: list[int] = attrs.field(factory=list)
    after: list[int] = attrs.field(factory=list)


@pytest.fixture
def orders(engine: sa.Engine, prefix: str) -> Iterator[sa.Table]:
    """The application's table, mapped to ``Order`` for ``session.add``."""
    table = sa.Table(
        f"{prefix}_orders",
        sa.MetaData(),
        sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    )
    table.metadata.create_all(engine)
    mapper = registry()
    mapper.map_imperatively(Order, table)
    yield table
    mapper.dispose()


@pytest.fixture
def bus(engine: sa.Engine, prefix: str, orders: sa.Table) -> Iterator[EventBus]:
    del orders  # created before the outbox
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05, lease=5.0)
    made = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none()),
    )
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
    bus.subscribe(OrderViewed, name="viewed", delivery="after_commit")(
        lambda e: record.after.append(e.number)
    )
    bus.subscribe(OrderPaid, name="paid", delivery="durable")(
        lambda e: record.durable.append(e.number)
    )
    bus.start()
    return record


def settle(bus: EventBus) -> None:
    """Everything delivered, and a few more relay polls: nothing comes twice."""
    bus.drain(timeout=10)
    time.sleep(0.2)
    bus.drain(timeout=10)


def numbers_in(engine: sa.Engine, table: sa.Table) -> list[int]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(table.c.number)).scalars())


def outbox_rows(engine: sa.Engine, bus: EventBus) -> int:
    outbox = bus.outbox
    assert isinstance(outbox, SQLAlchemyOutbox)
    with engine.connect() as connection:
        count = sa.select(sa.func.count()).select_from(outbox.outbox)
        return int(connection.execute(count).scalar_one())


def in_a_thread(function: Callable[..., T], *args: Any) -> T:
    """Run ``function`` on a new worker thread and return what it returns (or raise)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args).result()


def serve(dependency: Callable[[], Iterator[Session]], route: Callable[[Session], None]) -> None:
    """One request as FastAPI serves a sync route whose sync dependency yields a session:
    the dependency's setup, the route and the teardown each on a worker thread (three
    different ones here); the route's exception is thrown into the dependency, whose
    teardown sees it, then it reaches the caller."""
    manager = contextlib.contextmanager(dependency)()
    session = in_a_thread(manager.__enter__)
    try:
        in_a_thread(route, session)
    except BaseException as error:
        if not in_a_thread(manager.__exit__, type(error), error, error.__traceback__):
            raise
        return
    in_a_thread(manager.__exit__, None, None, None)


# -- FastAPI: a dependency that yields a session ------------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_a_fastapi_dependency_that_yields_inside_session_begin(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, fails: bool
) -> None:
    def get_session() -> Iterator[Session]:
        with Session(engine) as session, session.begin():
            yield session

    def create_order(session: Session) -> None:
        with bus.transaction(session) as same:
            assert same is session
            session.add(Order(number=1))
            bus.publish(OrderPlaced(number=1))
        # Joined, not committed: the dependency commits, after the route returns.
        assert session.in_transaction()
        assert outbox_rows(engine, bus) == 0
        assert seen.after == []
        if fails:
            raise BoomError

    if fails:
        with pytest.raises(BoomError):
            serve(get_session, create_order)
    else:
        serve(get_session, create_order)
    settle(bus)

    expected = [] if fails else [1]
    assert seen.inline == [1]  # inline handlers run in the publish, as function calls do
    assert seen.durable == expected
    assert seen.after == expected
    assert numbers_in(engine, orders) == expected
    assert outbox_rows(engine, bus) == 0


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_a_fastapi_dependency_that_commits_after_the_yield(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, fails: bool
) -> None:
    def get_session() -> Iterator[Session]:
        session = Session(engine)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def create_order(session: Session) -> None:
        session.add(Order(number=1))  # autobegins the session's transaction
        with bus.transaction(session):
            bus.publish(OrderPlaced(number=1))
        if fails:
            raise BoomError

    if fails:
        with pytest.raises(BoomError):
            serve(get_session, create_order)
    else:
        serve(get_session, create_order)
    settle(bus)

    expected = [] if fails else [1]
    assert seen.durable == expected
    assert seen.after == expected
    assert numbers_in(engine, orders) == expected
    assert outbox_rows(engine, bus) == 0


# -- Flask-SQLAlchemy: a scoped session, committed by the view, removed at teardown -------


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_a_flask_sqlalchemy_style_scoped_session(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, fails: bool
) -> None:
    db_session = scoped_session(sessionmaker(engine))

    def view(number: int) -> None:
        db_session.add(Order(number=number))
        with bus.transaction(db_session):  # the proxy, as db.session is passed
            bus.publish(OrderPlaced(number=number))
        if fails:
            raise BoomError
        db_session.commit()

    def request(number: int) -> None:
        try:
            view(number)
        finally:
            db_session.remove()  # the teardown: rolls back whatever was not committed

    for number in (1, 2):  # each request on a thread of its own, as a WSGI server does
        if fails:
            with pytest.raises(BoomError):
                in_a_thread(request, number)
        else:
            in_a_thread(request, number)
    settle(bus)

    expected = [] if fails else [1, 2]
    assert sorted(seen.durable) == expected
    assert sorted(seen.after) == expected
    assert numbers_in(engine, orders) == expected
    assert outbox_rows(engine, bus) == 0


# -- sessionmaker.begin() ----------------------------------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_sessionmaker_begin(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, fails: bool
) -> None:
    make_session = sessionmaker(engine)
    with contextlib.suppress(BoomError), make_session.begin() as session:
        session.add(Order(number=1))
        with bus.transaction(session):
            bus.publish(OrderPlaced(number=1))
            bus.publish(OrderViewed(number=10))
        if fails:
            raise BoomError
    settle(bus)

    assert seen.durable == ([] if fails else [1])
    assert sorted(seen.after) == ([] if fails else [1, 10])
    assert numbers_in(engine, orders) == ([] if fails else [1])
    assert outbox_rows(engine, bus) == 0


# -- a publish with no scope inside an open transaction is refused ------------------------


@contextlib.contextmanager
def sessionmaker_begin(engine: sa.Engine, orders: sa.Table) -> Iterator[object]:
    del orders
    with sessionmaker(engine).begin() as session:
        session.add(Order(number=1))
        yield session


@contextlib.contextmanager
def begin_before_any_statement(engine: sa.Engine, orders: sa.Table) -> Iterator[object]:
    """The issue's example: the session has a transaction, but no connection yet."""
    del orders
    with Session(engine) as session, session.begin():
        yield session
        session.add(Order(number=1))


@contextlib.contextmanager
def scoped_autobegin(engine: sa.Engine, orders: sa.Table) -> Iterator[object]:
    del orders
    db_session = scoped_session(sessionmaker(engine))
    try:
        db_session.add(Order(number=1))  # autobegun
        yield db_session
        db_session.commit()
    finally:
        db_session.remove()


@contextlib.contextmanager
def core_connection(engine: sa.Engine, orders: sa.Table) -> Iterator[object]:
    with engine.begin() as connection:
        connection.execute(sa.insert(orders).values(number=1))
        yield connection


@pytest.mark.parametrize(
    "opened",
    [sessionmaker_begin, begin_before_any_statement, scoped_autobegin, core_connection],
)
@pytest.mark.parametrize("published", [OrderPlaced, OrderViewed], ids=["durable", "after"])
def test_a_publish_with_no_scope_inside_an_open_transaction_is_refused(
    bus: EventBus,
    seen: Seen,
    engine: sa.Engine,
    orders: sa.Table,
    *,
    opened: Callable[[sa.Engine, sa.Table], contextlib.AbstractContextManager[object]],
    published: type[Any],
) -> None:
    with opened(engine, orders) as resource:
        argument = "connection" if isinstance(resource, sa.Connection) else "session"
        with pytest.raises(TransactionScopeError, match=rf"with bus\.transaction\({argument}\)"):
            bus.publish(published(number=1))
        with pytest.raises(TransactionScopeError, match="No handler was run"):
            bus.publish(published(number=2), key="k")
    settle(bus)

    assert seen == Seen()  # not even the inline handler
    assert numbers_in(engine, orders) == [1]  # the application's transaction went on
    assert outbox_rows(engine, bus) == 0


def test_a_publish_with_no_scope_is_not_refused_for_transactions_it_cannot_bypass(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    make_session = sessionmaker(engine)
    with make_session.begin() as session:  # ended before the publish
        session.add(Order(number=1))
    bus.publish(OrderPlaced(number=2))

    other = sa.create_engine("sqlite://")  # another database: not the outbox's
    try:
        with Session(other) as session, session.begin():
            session.execute(sa.text("SELECT 1"))
            bus.publish(OrderPlaced(number=3))
    finally:
        other.dispose()

    # Another thread's transaction is not this thread's: its publish commits its row.
    holding, release = threading.Event(), threading.Event()

    def hold_a_transaction() -> None:
        with make_session.begin() as held:
            held.add(Order(number=4))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_transaction)
    holder.start()
    try:
        assert holding.wait(10)
        bus.publish(OrderPlaced(number=5))
    finally:
        release.set()
        holder.join(10)
    settle(bus)

    assert sorted(seen.durable) == [2, 3, 5]
    assert sorted(seen.after) == [2, 3, 5]
    assert numbers_in(engine, orders) == [1, 4]


# -- inside a joined transaction ---------------------------------------------------------


def test_a_nested_transaction_inside_a_joined_one_is_a_savepoint(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    with sessionmaker(engine).begin() as session:
        with bus.transaction(session):
            session.add(Order(number=1))
            bus.publish(OrderPlaced(number=1))
            with pytest.raises(BoomError), bus.transaction(session):  # noqa: PT012
                session.add(Order(number=2))
                session.flush()
                bus.publish(OrderPlaced(number=2))
                raise BoomError
            assert session.in_transaction()
            with bus.transaction(session):  # released: its publishes stay
                bus.publish(OrderPlaced(number=3))
        assert seen.after == []
    settle(bus)

    assert sorted(seen.durable) == [1, 3]
    assert sorted(seen.after) == [1, 3]
    assert numbers_in(engine, orders) == [1]


def test_an_exception_in_a_joined_block_undoes_the_block_and_only_the_block(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    """The owner catches the exception and commits anyway: the block's writes and its
    events are gone together; what the owner wrote around it stays."""
    with sessionmaker(engine).begin() as session:
        session.add(Order(number=1))
        with pytest.raises(BoomError), bus.transaction(session):  # noqa: PT012
            session.add(Order(number=2))
            bus.publish(OrderPlaced(number=2))
            raise BoomError
        with bus.transaction(session):
            session.add(Order(number=3))
            bus.publish(OrderPlaced(number=3))
    settle(bus)

    assert seen.durable == [3]
    assert seen.after == [3]
    assert numbers_in(engine, orders) == [1, 3]
    assert outbox_rows(engine, bus) == 0


def test_a_savepoint_of_the_owner_rolled_back_drops_what_was_joined_inside_it(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    with sessionmaker(engine).begin() as session:
        undone = session.begin_nested()
        with bus.transaction(session):
            session.add(Order(number=1))
            bus.publish(OrderPlaced(number=1))
        undone.rollback()
        kept = session.begin_nested()
        with bus.transaction(session):
            session.add(Order(number=2))
            bus.publish(OrderPlaced(number=2))
        kept.commit()
    settle(bus)

    assert seen.durable == [2]
    assert seen.after == [2]  # not 1: its savepoint rolled back, though the owner committed
    assert numbers_in(engine, orders) == [2]


def test_a_commit_inside_a_joined_block_is_refused_and_publishes_nothing(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    with Session(engine) as session:
        session.begin()
        session.add(Order(number=1))
        with (  # noqa: PT012
            pytest.raises(TransactionScopeError, match="ended inside the block"),
            bus.transaction(session),
        ):
            bus.publish(OrderPlaced(number=1))
            session.commit()  # the owner's transaction, ended by the block
        assert not session.in_transaction()
    settle(bus)

    assert seen.durable == []
    assert seen.after == []
    assert numbers_in(engine, orders) == [1]
    assert outbox_rows(engine, bus) == 0


def test_a_long_lived_session_keeps_nothing_between_its_transactions(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table
) -> None:
    """What waited for a commit is gone once the transaction ends, committed or not."""
    with Session(engine) as session:
        for number in range(1, 7):
            session.begin()
            with bus.transaction(session):
                session.add(Order(number=number))
                bus.publish(OrderPlaced(number=number))
            if number % 2:
                session.commit()
            else:
                session.rollback()
            assert not any(key.startswith("eventbus") for key in session.info)
    settle(bus)

    assert sorted(seen.after) == [1, 3, 5]
    assert sorted(seen.durable) == [1, 3, 5]


@pytest.mark.parametrize("fails", [False, True], ids=["commits", "raises"])
def test_a_core_connection_already_in_a_transaction_is_joined(
    bus: EventBus, seen: Seen, engine: sa.Engine, orders: sa.Table, fails: bool
) -> None:
    with contextlib.suppress(BoomError), engine.begin() as connection:
        connection.execute(sa.insert(orders).values(number=1))
        with bus.transaction(connection):
            bus.publish(OrderPaid(number=1), key="k")
        # A Connection cannot report its commit: after-commit handlers are refused.
        with (
            pytest.raises(TransactionScopeError, match="cannot tell the bus when"),
            bus.transaction(connection),
        ):
            bus.publish(OrderViewed(number=2))
        if fails:
            raise BoomError
    settle(bus)

    assert seen.durable == ([] if fails else [1])
    assert seen.after == []
    assert numbers_in(engine, orders) == ([] if fails else [1])
    assert outbox_rows(engine, bus) == 0


def test_a_second_bus_joins_the_transaction_of_the_first(
    bus: EventBus, seen: Seen, engine: sa.Engine, prefix: str, orders: sa.Table
) -> None:
    """Each bus writes its own rows to its own outbox; the second one's after-commit
    handlers wait for the first one's commit, and go with its rollback."""
    other_outbox = SQLAlchemyOutbox(engine, prefix=f"{prefix}b", poll_interval=0.05)
    other = EventBus(registry=REGISTRY, outbox=other_outbox)
    theirs = Seen()
    other.subscribe(OrderPaid, name="their_durable", delivery="durable")(
        lambda e: theirs.durable.append(e.number)
    )
    other.subscribe(OrderViewed, name="their_after", delivery="after_commit")(
        lambda e: theirs.after.append(e.number)
    )
    try:
        with Session(engine) as session:
            with bus.transaction(session):
                bus.publish(OrderPlaced(number=1))
                with other.transaction(session):
                    other.publish(OrderPaid(number=2))
                    other.publish(OrderViewed(number=3))
                assert theirs.after == []
            with pytest.raises(BoomError), bus.transaction(session):  # noqa: PT012
                with other.transaction(session):
                    other.publish(OrderPaid(number=4))
                    other.publish(OrderViewed(number=5))
                raise BoomError
        settle(bus)
        settle(other)

        assert seen.durable == [1]
        assert theirs.durable == [2]
        assert theirs.after == [3]
        assert outbox_rows(engine, bus) == 0
        assert outbox_rows(engine, other) == 0
    finally:
        other.close()
        other_outbox.close()
