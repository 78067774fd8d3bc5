"""Durable delivery through the bus: transactions, savepoints, the relay, the inbox.

Every test runs a real bus on a real SQLite outbox file. Durable rows are written in the
application's transaction and relayed after its commit; after-commit handlers wait for
the same commit; a rollback (or a rolled-back savepoint) drops both. A handler that takes
a ``sqlite3.Connection`` has its writes and its inbox mark committed together, so a row
delivered twice has one effect.
"""

import random
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tenacity

from eventbus import (
    ConfigurationError,
    EncodeError,
    Envelope,
    EventBus,
    EventRegistry,
    JSONCodec,
    RetryLater,
    RetryPolicy,
    event,
)
from eventbus.outbox import PendingRow, SQLiteOutbox

REGISTRY = EventRegistry()
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


@event("durable.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int
    note: str = ""


class BoomError(Exception):
    pass


ZERO_WAIT = RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def make_bus(path: Path) -> Iterator[Callable[..., EventBus]]:
    """Buses on the outbox at ``path``; each bus, then its outbox, is closed at the end."""
    made: list[tuple[EventBus, SQLiteOutbox]] = []

    def make(
        *, poll_interval: float = 0.05, lease: float = 5.0, timeout: float = 5.0, **options: object
    ) -> EventBus:
        outbox = SQLiteOutbox(path, poll_interval=poll_interval, lease=lease, timeout=timeout)
        bus = EventBus(registry=REGISTRY, outbox=outbox, **options)  # type: ignore[arg-type]
        made.append((bus, outbox))
        return bus

    yield make
    for bus, outbox in made:
        bus.close()
        outbox.close()


@pytest.fixture
def bus(make_bus: Callable[..., EventBus]) -> EventBus:
    return make_bus(retry=ZERO_WAIT)


@pytest.fixture
def connect(path: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Application connections (autocommit, explicit transactions); closed at the end."""
    opened: list[sqlite3.Connection] = []

    def open_connection() -> sqlite3.Connection:
        connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()


@pytest.fixture
def conn(connect: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
    connection = connect()
    connection.execute("CREATE TABLE IF NOT EXISTS orders (number INTEGER)")
    connection.execute("CREATE TABLE IF NOT EXISTS effects (handler TEXT, number INTEGER)")
    return connection


def rows_in(path: Path) -> list[tuple[object, ...]]:
    """The outbox rows, oldest first: (destination, attempts, lease_owner, due in s)."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(
            f"SELECT destination, attempts, lease_owner, available_at - {_NOW} "
            "FROM eventbus_outbox ORDER BY id"
        ).fetchall()
    finally:
        connection.close()


def scalar(path: Path, sql: str, params: tuple[object, ...] = ()) -> object:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, params).fetchone()[0]
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s")
        time.sleep(0.02)


# -- transactions ----------------------------------------------------------------------


def test_a_commit_delivers_to_the_durable_handler_exactly_once(
    bus: EventBus, conn: sqlite3.Connection, path: Path
) -> None:
    got: list[tuple[int, object]] = []

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced, envelope: Envelope) -> None:
        got.append((event.number, envelope.id))

    with bus.transaction(conn):
        conn.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1), key="order-1")
    bus.drain(timeout=10)
    time.sleep(0.2)  # a few more polls: nothing is delivered twice
    bus.drain(timeout=10)

    assert [number for number, _ in got] == [1]
    assert scalar(path, "SELECT COUNT(*) FROM orders") == 1
    assert rows_in(path) == []
    assert (
        scalar(
            path,
            "SELECT COUNT(*) FROM eventbus_inbox WHERE handler = 'keep' AND envelope_id = ?",
            (str(got[0][1]),),
        )
        == 1
    )


def test_a_rolled_back_transaction_publishes_nothing(
    bus: EventBus, conn: sqlite3.Connection, path: Path
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

    with pytest.raises(BoomError), bus.transaction(conn):  # noqa: PT012
        conn.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1))
        bus.publish(OrderPlaced(number=2))
        raise BoomError

    assert not conn.in_transaction
    assert rows_in(path) == []
    bus.drain(timeout=10)
    time.sleep(0.2)
    assert durable == []
    assert after == []
    assert inline == [1, 2]  # inline handlers ran in the publish, as function calls do
    assert scalar(path, "SELECT COUNT(*) FROM orders") == 0
    assert scalar(path, "SELECT COUNT(*) FROM eventbus_inbox") == 0


def test_a_rolled_back_savepoint_drops_only_its_own_publishes(
    bus: EventBus, conn: sqlite3.Connection, path: Path
) -> None:
    durable: list[int] = []
    after: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )

    with bus.transaction(conn):
        conn.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1))
        with pytest.raises(BoomError), bus.transaction(conn):  # noqa: PT012
            conn.execute("INSERT INTO orders VALUES (2)")
            bus.publish(OrderPlaced(number=2))
            with bus.transaction(conn):  # committed inside the rolled-back one: gone too
                bus.publish(OrderPlaced(number=3))
            raise BoomError
        assert conn.in_transaction  # the outer transaction goes on
        with bus.transaction(conn):  # a savepoint released: its publishes stay
            conn.execute("INSERT INTO orders VALUES (4)")
            bus.publish(OrderPlaced(number=4))
        bus.publish(OrderPlaced(number=5))
    bus.drain(timeout=10)

    assert sorted(durable) == [1, 4, 5]
    assert sorted(after) == [1, 4, 5]
    assert [n for (n,) in conn.execute("SELECT number FROM orders ORDER BY number")] == [1, 4]
    assert rows_in(path) == []


def test_after_commit_handlers_wait_for_the_commit(bus: EventBus, conn: sqlite3.Connection) -> None:
    ran = threading.Event()
    seen: list[int] = []

    @bus.subscribe(delivery="after_commit")
    def notify(event: OrderPlaced) -> None:
        seen.append(event.number)
        ran.set()

    bus.start()
    with bus.transaction(conn):
        bus.publish(OrderPlaced(number=1))
        assert not ran.wait(0.3), "an after-commit handler ran before the commit"
        assert seen == []
    assert ran.wait(5), "the after-commit handler did not run after the commit"
    bus.drain(timeout=10)
    assert seen == [1]


def test_after_commit_handlers_are_dropped_on_rollback(
    bus: EventBus, conn: sqlite3.Connection
) -> None:
    seen: list[int] = []
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: seen.append(e.number)
    )
    bus.start()

    with pytest.raises(BoomError), bus.transaction(conn):  # noqa: PT012
        bus.publish(OrderPlaced(number=1))
        raise BoomError
    with bus.transaction(conn):
        bus.publish(OrderPlaced(number=2))
    bus.drain(timeout=10)
    time.sleep(0.1)
    assert seen == [2]


def test_a_durable_publish_outside_any_scope_commits_its_own_row(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: None)

    writer.publish(OrderPlaced(number=7), key="k")
    # Committed already: another connection sees it at once.
    assert [(d, a, o) for d, a, o, _ in rows_in(path)] == [("keep", 0, None)]

    relay = make_bus()
    got: list[int] = []
    relay.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))
    relay.publish(OrderPlaced(number=8))
    relay.drain(timeout=10)
    assert sorted(got) == [7, 8]
    assert rows_in(path) == []


# -- the inbox and the handler's own transaction ---------------------------------------


def test_a_connection_handler_has_one_effect_when_its_row_is_delivered_twice(
    bus: EventBus, conn: sqlite3.Connection, path: Path
) -> None:
    envelopes: list[Envelope] = []
    calls: list[int] = []

    @bus.subscribe(name="apply", delivery="durable")
    def apply(event: OrderPlaced, envelope: Envelope, connection: sqlite3.Connection) -> None:
        calls.append(event.number)
        envelopes.append(envelope)
        connection.execute("INSERT INTO effects VALUES ('apply', ?)", (event.number,))

    with bus.transaction(conn):
        bus.publish(OrderPlaced(number=1), key="k")
    bus.drain(timeout=10)
    assert calls == [1]

    # The same envelope for the same handler again, as a relay that crashed after
    # committing the handler's transaction but before deleting the row would see it.
    (envelope,) = envelopes
    outbox = bus.outbox
    assert outbox is not None
    payload = bus.codec.encode(envelope)
    outbox.write_now([PendingRow(envelope.id, envelope.name, "apply", envelope.key, payload)])
    outbox.write_now([PendingRow(envelope.id, envelope.name, "apply", envelope.key, payload)])
    bus.publish(OrderPlaced(number=2))  # wakes the relay
    bus.drain(timeout=10)

    assert calls == [1, 2]
    assert conn.execute("SELECT number FROM effects ORDER BY number").fetchall() == [(1,), (2,)]
    assert scalar(path, "SELECT COUNT(*) FROM eventbus_inbox WHERE handler = 'apply'") == 2
    assert rows_in(path) == []


def test_a_connection_handler_has_one_effect_when_duplicates_arrive_in_one_batch(
    make_bus: Callable[..., EventBus], conn: sqlite3.Connection, path: Path
) -> None:
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="apply", delivery="durable")(lambda e: None)
    writer.publish(OrderPlaced(number=1))
    ((envelope_id, payload),) = conn.execute(
        "SELECT envelope_id, payload FROM eventbus_outbox"
    ).fetchall()
    outbox = writer.outbox
    assert outbox is not None
    duplicate = PendingRow(uuid.UUID(envelope_id), "durable.order_placed", "apply", None, payload)
    outbox.write_now([duplicate, duplicate])  # no key: all three are claimed together

    relay = make_bus()
    calls: list[int] = []

    @relay.subscribe(name="apply", delivery="durable")
    def apply(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        calls.append(event.number)
        connection.execute("INSERT INTO effects VALUES ('apply', ?)", (event.number,))

    relay.start()
    wait_until(lambda: rows_in(path) == [], timeout=10)
    relay.drain(timeout=10)

    assert conn.execute("SELECT handler, number FROM effects").fetchall() == [("apply", 1)]
    assert calls == [1]
    assert scalar(path, "SELECT COUNT(*) FROM eventbus_inbox") == 1


def test_a_plain_durable_handler_is_not_run_again_for_a_redelivered_envelope(
    bus: EventBus, path: Path
) -> None:
    envelopes: list[Envelope] = []

    @bus.subscribe(name="plain", delivery="durable")
    def plain(event: OrderPlaced, envelope: Envelope) -> None:
        envelopes.append(envelope)

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)
    (envelope,) = envelopes
    outbox = bus.outbox
    assert outbox is not None
    outbox.write_now(
        [PendingRow(envelope.id, envelope.name, "plain", None, bus.codec.encode(envelope))]
    )
    bus.publish(OrderPlaced(number=2))
    bus.drain(timeout=10)

    assert [e.event.number for e in envelopes] == [1, 2]  # type: ignore[attr-defined]
    assert rows_in(path) == []


def test_a_connection_handler_that_raises_leaves_no_partial_writes(
    make_bus: Callable[..., EventBus], conn: sqlite3.Connection, path: Path
) -> None:
    bus = make_bus(retry=ZERO_WAIT)
    attempts: list[int] = []

    @bus.subscribe(name="half", delivery="durable")
    def half(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        attempts.append(event.number)
        connection.execute("INSERT INTO effects VALUES ('half', ?)", (event.number,))
        if len(attempts) < 3 or event.number == 2:
            raise BoomError("after writing")

    bus.publish(OrderPlaced(number=1))  # fails twice, then succeeds
    bus.drain(timeout=10)
    bus.publish(OrderPlaced(number=2))  # always fails: dead-lettered
    bus.drain(timeout=10)

    assert attempts == [1, 1, 1, 2, 2, 2]
    # Only the successful attempt's write is there; the inbox matches it.
    assert conn.execute("SELECT handler, number FROM effects").fetchall() == [("half", 1)]
    assert scalar(path, "SELECT COUNT(*) FROM eventbus_inbox WHERE handler = 'half'") == 1
    (letter,) = bus.dead_letters.list()
    assert (letter.handler, letter.attempts) == ("half", 3)
    assert rows_in(path) == []


def test_one_failing_durable_handler_does_not_repeat_the_good_one(
    bus: EventBus, path: Path
) -> None:
    good: list[int] = []
    bad: list[int] = []
    bus.subscribe(OrderPlaced, name="good", delivery="durable")(lambda e: good.append(e.number))

    @bus.subscribe(name="bad", delivery="durable")
    def failing(event: OrderPlaced) -> None:
        bad.append(event.number)
        raise BoomError(f"cannot handle {event.number}")

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)

    assert good == [1]
    assert bad == [1, 1, 1]
    (letter,) = bus.dead_letters.list()
    assert letter.handler == "bad"
    assert letter.attempts == 3
    assert "cannot handle 1" in letter.message
    assert bus.dead_letters.count(handler="good") == 0
    assert rows_in(path) == []
    assert scalar(path, "SELECT COUNT(*) FROM eventbus_inbox WHERE handler = 'good'") == 1


def test_retry_later_waits_for_its_delay_in_the_outbox(bus: EventBus, path: Path) -> None:
    times: list[float] = []
    rows_at_retry: list[list[tuple[object, ...]]] = []

    @bus.subscribe(name="later", delivery="durable")
    def later(event: OrderPlaced) -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            raise RetryLater(0.2, "not yet")
        rows_at_retry.append(rows_in(path))

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)  # the row waiting for its time is in flight: drain waits for it

    assert len(times) == 2
    assert times[1] - times[0] >= 0.18  # the database's clock held it back, not ours
    # During the retry the row was still in the outbox, its first attempt counted.
    [[(destination, attempts, owner, _)]] = rows_at_retry
    assert (destination, attempts) == ("later", 1)
    assert owner is not None
    assert rows_in(path) == []
    assert bus.dead_letters.count() == 0


def test_drain_stops_waiting_for_a_retry_that_another_relay_took(bus: EventBus, path: Path) -> None:
    """A row put back for a retry is in flight only while it is this relay's: once it is
    due and a claim finds it gone (another relay delivered it), drain returns."""
    attempts: list[int] = []

    @bus.subscribe(name="later", delivery="durable")
    def later(event: OrderPlaced) -> None:
        attempts.append(event.number)
        raise RetryLater(0.2, "not yet")

    bus.publish(OrderPlaced(number=1))
    wait_until(lambda: [(a, o) for _, a, o, _ in rows_in(path)] == [(1, None)])
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("DELETE FROM eventbus_outbox")  # what another relay's completion does
    finally:
        connection.close()
    bus.drain(timeout=30)  # no TimeoutError: nothing of this process waits any more
    assert attempts == [1]


def test_each_key_is_handled_in_publish_order_despite_retries(
    make_bus: Callable[..., EventBus], conn: sqlite3.Connection, path: Path
) -> None:
    bus = make_bus(
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(1000), wait=tenacity.wait_none()),
    )
    chance = random.Random(20240501)
    handled: dict[str, list[int]] = defaultdict(list)
    retried: list[int] = []
    lock = threading.Lock()

    @bus.subscribe(name="ordered", delivery="durable")
    def ordered(event: OrderPlaced, envelope: Envelope) -> None:
        with lock:
            if chance.random() < 0.2:
                retried.append(event.number)
                raise RetryLater(0)
            assert envelope.key is not None
            handled[envelope.key].append(event.number)

    published: dict[str, list[int]] = defaultdict(list)
    for start in range(0, 200, 20):
        with bus.transaction(conn):
            for number in range(start, start + 20):
                key = f"customer-{number % 5}"
                bus.publish(OrderPlaced(number=number), key=key)
                published[key].append(number)
    wait_until(lambda: rows_in(path) == [], timeout=60)
    bus.drain(timeout=10)

    assert len(retried) > 10  # the retries really happened
    assert dict(handled) == dict(published)
    assert bus.dead_letters.count() == 0


def test_an_event_too_large_to_encode_fails_the_publish_and_writes_nothing(
    make_bus: Callable[..., EventBus], conn: sqlite3.Connection, path: Path
) -> None:
    bus = make_bus(codec=JSONCodec(REGISTRY, max_size=300))
    inline: list[int] = []
    durable: list[int] = []
    bus.subscribe(OrderPlaced, name="inline")(lambda e: inline.append(e.number))
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: durable.append(e.number))

    with pytest.raises(EncodeError), bus.transaction(conn):  # noqa: PT012
        conn.execute("INSERT INTO orders VALUES (1)")
        bus.publish(OrderPlaced(number=1, note="x" * 1000))
    with pytest.raises(EncodeError):
        bus.publish(OrderPlaced(number=2, note="x" * 1000))

    assert rows_in(path) == []
    assert scalar(path, "SELECT COUNT(*) FROM orders") == 0  # the business write rolled back
    assert inline == []  # refused before any handler ran
    bus.publish(OrderPlaced(number=3, note="small"))
    bus.drain(timeout=10)
    assert durable == [3]


def test_a_row_for_a_handler_this_bus_does_not_have_stays_in_the_outbox(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="elsewhere", delivery="durable")(lambda e: None)
    writer.publish(OrderPlaced(number=1))

    relay = make_bus()
    here: list[int] = []
    relay.subscribe(OrderPlaced, name="here", delivery="durable")(lambda e: here.append(e.number))
    relay.publish(OrderPlaced(number=2))
    relay.drain(timeout=10)
    time.sleep(0.2)
    relay.drain(timeout=10)

    assert here == [2]
    ((destination, attempts, owner, due),) = rows_in(path)
    assert destination == "elsewhere"
    assert attempts == 0  # not a failure of the handler: nothing counts against it
    assert owner is None
    assert due > 1.0  # type: ignore[operator]
    assert relay.dead_letters.count() == 0


def test_a_retry_survives_a_restart(make_bus: Callable[..., EventBus], path: Path) -> None:
    first = make_bus()
    tried: list[int] = []

    @first.subscribe(name="survivor", delivery="durable")
    def flaky(event: OrderPlaced) -> None:
        tried.append(event.number)
        raise RetryLater(1.0, "the service is down")

    first.publish(OrderPlaced(number=1))
    # Not drain(): it would wait for the retry. close() leaves a waiting row in the outbox.
    wait_until(lambda: [a for _, a, o, _ in rows_in(path) if o is None] == [1])
    first.close()
    assert tried == [1]
    ((destination, attempts, owner, due),) = rows_in(path)
    assert (destination, attempts, owner) == ("survivor", 1, None)
    assert due > 0  # type: ignore[operator]

    second = make_bus()
    got: list[int] = []
    second.subscribe(OrderPlaced, name="survivor", delivery="durable")(
        lambda e: got.append(e.number)
    )
    second.start()
    wait_until(lambda: rows_in(path) == [], timeout=10)
    assert got == [1]
    assert tried == [1]


def test_a_bus_without_a_relay_writes_rows_but_never_delivers(
    make_bus: Callable[..., EventBus], conn: sqlite3.Connection, path: Path
) -> None:
    bus = make_bus(relay=False)
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    with bus.transaction(conn):
        bus.publish(OrderPlaced(number=1))
    bus.publish(OrderPlaced(number=2))
    bus.start()
    bus.drain(timeout=10)
    time.sleep(0.3)

    assert got == []
    assert [(d, a, o) for d, a, o, _ in rows_in(path)] == [("keep", 0, None)] * 2
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 2


def test_a_database_lock_longer_than_the_timeout_does_not_stop_the_relay(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    """Another writer holds SQLite's write lock for longer than the outbox's busy timeout
    while the relay settles a batch: that batch waits for its lease, later ones go on."""
    bus = make_bus(timeout=0.2, lease=1.0, shutdown_timeout=2.0)
    held = threading.Event()
    released = threading.Event()
    got: list[int] = []

    def hold_the_write_lock() -> None:  # another part of the application writes for 1 s
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            held.set()
            time.sleep(1.0)
            holder.execute("ROLLBACK")
        finally:
            holder.close()
            released.set()

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced) -> None:
        got.append(event.number)
        if event.number == 1 and not held.is_set():
            threading.Thread(target=hold_the_write_lock, daemon=True).start()
            assert held.wait(5)

    bus.publish(OrderPlaced(number=1))
    assert released.wait(10)
    bus.publish(OrderPlaced(number=2))

    wait_until(lambda: 2 in got and rows_in(path) == [], timeout=8)
    bus.drain(timeout=5)
    assert sorted(set(got)) == [1, 2]  # 1 may run twice: a plain handler is at least once


def test_an_async_handler_that_takes_a_connection_is_refused_or_run(
    bus: EventBus, conn: sqlite3.Connection, path: Path
) -> None:
    """Never accepted and then silently skipped (its coroutine never awaited)."""
    ran: list[int] = []

    async def apply(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        ran.append(event.number)
        connection.execute("INSERT INTO effects VALUES ('async', ?)", (event.number,))

    try:
        bus.subscribe(name="async-apply", delivery="durable")(apply)
    except ConfigurationError:
        return  # refused at subscribe: fine
    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)
    assert ran == [1]
    assert conn.execute("SELECT number FROM effects").fetchall() == [(1,)]


def test_a_handler_must_take_what_the_outbox_gives(tmp_path):
    import eventbus_contrib.sqlalchemy  # noqa: F401 - lets durable handlers take a Session
    import sqlalchemy.orm

    from eventbus import SQLiteOutbox as Store
    from eventbus.errors import HandlerSignatureError as SignatureError

    store = Store(tmp_path / "app.db")
    bus = EventBus(registry=REGISTRY, outbox=store, relay=False)
    try:
        with pytest.raises(SignatureError, match="gives durable handlers a Connection"):

            @bus.subscribe(name="wrong", delivery="durable")
            def wrong(event: OrderPlaced, session: sqlalchemy.orm.Session) -> None: ...

        assert bus.handlers == ()
    finally:
        bus.close()
        store.close()


class _Unit:
    """A connection type no part of eventbus knows: only the outbox below declares it."""


class _UnitOutbox(SQLiteOutbox):
    resource_type = _Unit


def test_a_handler_takes_what_its_outbox_declares_with_nothing_registered(tmp_path):
    """What a connection-taking handler may take comes from the bus's own outbox
    (``resource_type``), not from a list every integration adds to at import."""
    from eventbus.errors import HandlerSignatureError as SignatureError

    store = _UnitOutbox(tmp_path / "app.db")
    bus = EventBus(registry=REGISTRY, outbox=store, relay=False)
    try:

        @bus.subscribe(name="apply", delivery="durable")
        def apply(event: OrderPlaced, unit: _Unit) -> None: ...

        (handler,) = bus.handlers
        assert handler.connection_type is _Unit
        with pytest.raises(SignatureError, match="only a durable handler may"):

            @bus.subscribe(name="inline")
            def inline(event: OrderPlaced, unit: _Unit) -> None: ...

        assert [h.name for h in bus.handlers] == ["apply"]
    finally:
        bus.close()
        store.close()


def test_lock_contention_is_recognised_through_wrapping_errors():
    import sqlite3 as sqlite

    from eventbus.outbox._local import contention as _contention

    wrapper = RuntimeError("wrapped")
    wrapper.__cause__ = sqlite.OperationalError("database is locked")
    assert _contention(wrapper, object())
    assert not _contention(ValueError("no"), object())

    class Judge:
        def is_contention(self, error: BaseException) -> bool:
            return isinstance(error, TimeoutError)

    assert _contention(TimeoutError(), Judge())


def test_the_relay_reports_each_delivered_batch(bus, conn):
    from eventbus import hooks

    batches: list[tuple[object, tuple[Envelope, ...]]] = []

    def seen(sender: object, *, envelopes: tuple[Envelope, ...]) -> None:
        batches.append((sender, envelopes))

    @bus.subscribe(name="ok", delivery="durable")
    def ok(event: OrderPlaced) -> None: ...

    with hooks.outbox_relayed.connected_to(seen, sender=bus):
        with bus.transaction(conn):
            for number in range(3):
                bus.publish(OrderPlaced(number=number))
        bus.drain(timeout=10)
    delivered = [envelope.event for _, envelopes in batches for envelope in envelopes]
    assert sorted(event.number for event in delivered) == [0, 1, 2]
    assert all(sender is bus for sender, _ in batches)


class _DeafOutbox(SQLiteOutbox):
    """A store whose commit notifications cannot start (no connection, or an exiting
    Python 3.12 that refuses the listener's thread)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        raise RuntimeError("can't create new thread at interpreter shutdown")


def test_a_listener_that_cannot_start_leaves_the_relay_polling(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = _DeafOutbox(path, poll_interval=0.05)
    bus = EventBus(registry=REGISTRY, outbox=outbox)
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))
    try:
        bus.publish(OrderPlaced(number=1))
        bus.drain(timeout=10)
        assert got == [1]
        assert rows_in(path) == []
        assert "cannot listen for commits" in caplog.text
    finally:
        bus.close()
        outbox.close()
