"""``bus.transaction(connection)`` on a stdlib sqlite3 connection already in a transaction.

It joins: the block is a savepoint in the application's transaction and its outbox rows
are written at its end, so they commit with the application's COMMIT and vanish with its
ROLLBACK (an explicit ``BEGIN``, or the sqlite3 module's implicit transactions). The
sqlite3 module cannot report a commit, so after-commit handlers cannot wait for one:
an after-commit publish there is refused, before any handler runs.

A connection the outbox knows (``outbox.connect()``) in a transaction makes a durable
publish with no scope fail at once, instead of committing its row on the side.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from eventbus import EventBus, EventRegistry, SQLiteOutbox, TransactionScopeError, event

REGISTRY = EventRegistry()


@event("joined_sqlite3.order_placed", registry=REGISTRY)
class OrderPlaced:
    """Durable and inline handlers."""

    number: int


@event("joined_sqlite3.order_viewed", registry=REGISTRY)
class OrderViewed:
    """An after-commit handler."""

    number: int


class BoomError(Exception):
    pass


@attrs.frozen
class Seen:
    inline: list[int] = attrs.field(factory=list)
    durable: list[int] = attrs.field(factory=list)
    after: list[int] = attrs.field(factory=list)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def outbox(path: Path) -> Iterator[SQLiteOutbox]:
    store = SQLiteOutbox(path, poll_interval=0.05, lease=5.0)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE orders (number INTEGER)")
    connection.close()
    yield store
    store.close()


@pytest.fixture
def bus(outbox: SQLiteOutbox) -> Iterator[EventBus]:
    made = EventBus(registry=REGISTRY, outbox=outbox)
    yield made
    made.close()


@pytest.fixture
def seen(bus: EventBus) -> Seen:
    record = Seen()
    bus.subscribe(OrderPlaced, name="inline")(lambda e: record.inline.append(e.number))
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: record.durable.append(e.number)
    )
    bus.subscribe(OrderViewed, name="after", delivery="after_commit")(
        lambda e: record.after.append(e.number)
    )
    return record


@pytest.fixture
def connect(path: Path) -> Iterator[Callable[..., sqlite3.Connection]]:
    """The application's own connections (plain sqlite3, unknown to the outbox)."""
    opened: list[sqlite3.Connection] = []

    def open_connection(*, autocommit: bool = False) -> sqlite3.Connection:
        """``autocommit``: no implicit transactions (``isolation_level=None``); else the
        sqlite3 module's default, an INSERT opening a transaction."""
        if autocommit:
            connection = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        else:
            connection = sqlite3.connect(path, timeout=10.0)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


def settle(bus: EventBus) -> None:
    bus.drain(timeout=10)
    time.sleep(0.2)
    bus.drain(timeout=10)


def count(path: Path, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        connection.close()


def numbers(path: Path) -> list[int]:
    connection = sqlite3.connect(path)
    try:
        return [n for (n,) in connection.execute("SELECT number FROM orders ORDER BY number")]
    finally:
        connection.close()


@pytest.mark.parametrize("ends", ["COMMIT", "ROLLBACK"])
def test_a_transaction_begun_with_begin_is_joined(
    bus: EventBus, seen: Seen, path: Path, connect: Callable[..., sqlite3.Connection], ends: str
) -> None:
    connection = connect(autocommit=True)
    connection.execute("BEGIN")
    connection.execute("INSERT INTO orders VALUES (1)")
    with bus.transaction(connection) as same:
        assert same is connection
        bus.publish(OrderPlaced(number=1), key="k")
    assert connection.in_transaction  # joined: the application ends it
    assert count(path, "eventbus_outbox") == 0  # not committed yet
    connection.execute(ends)
    settle(bus)

    expected = [1] if ends == "COMMIT" else []
    assert seen.inline == [1]
    assert seen.durable == expected
    assert numbers(path) == expected
    assert count(path, "eventbus_outbox") == 0


@pytest.mark.parametrize("commits", [True, False], ids=["commit", "rollback"])
def test_the_sqlite3_modules_implicit_transaction_is_joined(
    bus: EventBus,
    seen: Seen,
    path: Path,
    connect: Callable[..., sqlite3.Connection],
    commits: bool,
) -> None:
    connection = connect()  # the module's default: an INSERT opens a transaction
    connection.execute("INSERT INTO orders VALUES (1)")
    assert connection.in_transaction
    with bus.transaction(connection):
        bus.publish(OrderPlaced(number=1))
    if commits:
        connection.commit()
    else:
        connection.rollback()
    settle(bus)

    assert seen.durable == ([1] if commits else [])
    assert numbers(path) == ([1] if commits else [])


def test_an_after_commit_publish_in_a_joined_sqlite3_transaction_is_refused(
    bus: EventBus, seen: Seen, path: Path, connect: Callable[..., sqlite3.Connection]
) -> None:
    connection = connect(autocommit=True)
    connection.execute("BEGIN")
    with bus.transaction(connection):
        with pytest.raises(TransactionScopeError, match="cannot tell the bus when") as caught:
            bus.publish(OrderViewed(number=1))
        bus.publish(OrderPlaced(number=2))  # durable handlers join fine
    connection.execute("COMMIT")
    settle(bus)

    assert "Let bus.transaction() begin the transaction" in str(caught.value)
    assert seen.after == []
    assert seen.durable == [2]


def test_an_exception_in_a_joined_block_undoes_only_the_block(
    bus: EventBus, seen: Seen, path: Path, connect: Callable[..., sqlite3.Connection]
) -> None:
    connection = connect(autocommit=True)
    connection.execute("BEGIN")
    connection.execute("INSERT INTO orders VALUES (1)")
    with pytest.raises(BoomError), bus.transaction(connection):  # noqa: PT012
        connection.execute("INSERT INTO orders VALUES (2)")
        bus.publish(OrderPlaced(number=2))
        raise BoomError
    assert connection.in_transaction  # the application's transaction goes on
    with bus.transaction(connection):
        bus.publish(OrderPlaced(number=3))
    connection.execute("COMMIT")  # the owner commits what is left
    settle(bus)

    assert seen.durable == [3]
    assert numbers(path) == [1]


def test_a_commit_inside_a_joined_block_is_refused_and_publishes_nothing(
    bus: EventBus, seen: Seen, path: Path, connect: Callable[..., sqlite3.Connection]
) -> None:
    connection = connect(autocommit=True)
    connection.execute("BEGIN")
    with (  # noqa: PT012
        pytest.raises(TransactionScopeError, match="ended inside the block"),
        bus.transaction(connection),
    ):
        connection.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1))
        connection.execute("COMMIT")
    settle(bus)

    assert seen.durable == []
    assert numbers(path) == [1]
    assert count(path, "eventbus_outbox") == 0


def test_a_nested_transaction_inside_a_joined_one_is_a_savepoint(
    bus: EventBus, seen: Seen, path: Path, connect: Callable[..., sqlite3.Connection]
) -> None:
    connection = connect(autocommit=True)
    connection.execute("BEGIN")
    with bus.transaction(connection):
        connection.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1))
        with pytest.raises(BoomError), bus.transaction(connection):  # noqa: PT012
            connection.execute("INSERT INTO orders VALUES (2)")
            bus.publish(OrderPlaced(number=2))
            raise BoomError
        with bus.transaction(connection):
            bus.publish(OrderPlaced(number=3))
    connection.execute("COMMIT")
    settle(bus)

    assert sorted(seen.durable) == [1, 3]
    assert numbers(path) == [1]


@pytest.mark.parametrize("published", [OrderPlaced, OrderViewed], ids=["durable", "after"])
def test_a_publish_with_no_scope_while_a_known_connection_is_in_a_transaction_is_refused(
    bus: EventBus, seen: Seen, outbox: SQLiteOutbox, path: Path, published: type[object]
) -> None:
    connection = outbox.connect()
    try:
        # Deferred, with nothing written yet: no lock would make the publish wait, and
        # its row would commit on the side, before the order and whatever became of it.
        connection.execute("BEGIN")
        with pytest.raises(TransactionScopeError, match=r"with bus\.transaction\(connection\)"):
            bus.publish(published(number=1))  # type: ignore[call-arg]
        connection.execute("INSERT INTO orders VALUES (1)")
        connection.execute("COMMIT")
        bus.publish(published(number=2))  # type: ignore[call-arg] # the transaction ended
    finally:
        connection.close()
    settle(bus)

    assert seen.inline == ([2] if published is OrderPlaced else [])  # not for the refused 1
    assert seen.durable + seen.after == [2]
    assert numbers(path) == [1]
    assert count(path, "eventbus_outbox") == 0


def test_another_threads_transaction_does_not_refuse_this_threads_publish(
    bus: EventBus, seen: Seen, outbox: SQLiteOutbox
) -> None:
    began, done = threading.Event(), threading.Event()

    def hold() -> None:
        connection = outbox.connect()
        try:
            connection.execute("BEGIN")  # deferred: it holds no lock
            began.set()
            done.wait(10)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert began.wait(10)
        bus.publish(OrderPlaced(number=1))
    finally:
        done.set()
        holder.join(10)
    settle(bus)

    assert seen.durable == [1]
