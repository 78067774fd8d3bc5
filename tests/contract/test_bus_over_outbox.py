"""Durable delivery through the bus, written once and run over every outbox store.

Each test runs a real bus on the stdlib ``SQLiteOutbox``, on a store written by a third
party on the public surface alone, and on ``SQLAlchemyOutbox`` on SQLite, PostgreSQL and
MariaDB; those about the application's transaction run also through
``bus.atransaction(AsyncSession)`` on PostgreSQL (the ``app`` fixture,
tests/contract/bus_over_outbox.py). Durable rows are written in the application's
transaction and relayed after its commit; after-commit handlers wait for the same commit;
a rollback (or a rolled-back savepoint) drops both. A handler that takes the store's
resource (a sqlite3 ``Connection``, a ``Session``) has its writes and its inbox mark
committed together, so a row delivered twice has one effect. Retries wait in the outbox,
survive a restart, keep each key's order; a row for a handler the bus does not have waits
for a bus that has it. What only one store has is in test_bus_over_sqlite.py and
test_bus_over_sqlalchemy.py (and the stores' own promises in test_outbox_contract.py).
"""

import asyncio
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
import tenacity

from eventbus import (
    ConfigurationError,
    EncodeError,
    Envelope,
    EventBus,
    JSONCodec,
    RetryLater,
    RetryPolicy,
    hooks,
)
from eventbus.outbox import PendingRow
from tests.contract.bus_over_outbox import REGISTRY, App, OrderPlaced, Tx

STORES = [
    pytest.param(kind, "sync", id=kind)
    for kind in ("sqlite3", "third-party", "sqlite", "postgresql", "mariadb")
]
# Indirect, so tests/conftest.py still probes the servers and skips those that are down.
every_store = pytest.mark.parametrize(("backend", "api"), STORES, indirect=["backend"])
every_transaction = pytest.mark.parametrize(
    ("backend", "api"),
    [*STORES, pytest.param("postgresql", "async", id="postgresql-asyncsession")],
    indirect=["backend"],
)


class BoomError(Exception):
    pass


ZERO_WAIT = RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none())
NEVER = RetryPolicy(stop=tenacity.stop_after_attempt(1), wait=tenacity.wait_none())


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s")
        time.sleep(0.02)


def takes_resource(app: App) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A handler's ``resource`` parameter annotated with what the store gives handlers
    that take their own transaction (a sqlite3 ``Connection``, a ``Session``)."""

    def annotate(handler: Callable[..., Any]) -> Callable[..., Any]:
        handler.__annotations__["resource"] = app.resource_type
        return handler

    return annotate


def publish_all(
    app: App, bus: EventBus, numbers: range, key: Callable[[int], str] | None = None
) -> None:
    """Publish ``numbers`` in one application transaction."""

    async def body(tx: Tx) -> None:
        async with tx.transaction():
            for number in numbers:
                await tx.publish(OrderPlaced(number=number), key=key(number) if key else None)

    app.run(bus, body)


# -- the application's transaction -------------------------------------------------------


@every_transaction
def test_a_commit_delivers_to_the_durable_handler_exactly_once(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    got: list[tuple[int, uuid.UUID]] = []
    resources: list[object] = []

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced, envelope: Envelope) -> None:
        got.append((event.number, envelope.id))

    @bus.subscribe(name="apply", delivery="durable")
    @takes_resource(app)
    def apply(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        resources.append(resource)

    async def body(tx: Tx) -> None:
        async with tx.transaction():
            await tx.insert("orders", 1)
            await tx.publish(OrderPlaced(number=1), key="order-1")
            assert app.outbox_rows("id") == []  # not committed: nobody else sees it

    app.run(bus, body)
    bus.drain(timeout=10)
    time.sleep(0.2)  # a few more polls: nothing is delivered twice
    bus.drain(timeout=10)

    assert [number for number, _ in got] == [1]
    assert app.numbers("orders") == [1]
    assert app.outbox_rows("id") == []
    assert app.inbox_rows("keep") == 1
    # The handler's own transaction is the store's sync resource, also under atransaction.
    assert len(resources) == 1
    assert isinstance(resources[0], app.resource_type)


@every_transaction
def test_a_rolled_back_transaction_publishes_nothing(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
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

    async def body(tx: Tx) -> None:
        with pytest.raises(BoomError):  # noqa: PT012
            async with tx.transaction():
                await tx.insert("orders", 1)
                await tx.publish(OrderPlaced(number=1))
                await tx.publish(OrderPlaced(number=2))
                raise BoomError
        assert not tx.in_transaction()

    app.run(bus, body)
    assert app.outbox_rows("id") == []
    bus.drain(timeout=10)
    time.sleep(0.2)
    assert durable == []
    assert after == []
    assert inline == [1, 2]  # inline handlers ran in the publish, as function calls do
    assert app.numbers("orders") == []
    assert app.inbox_rows() == 0


@every_transaction
def test_a_rolled_back_savepoint_drops_only_its_own_publishes(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    durable: list[int] = []
    after: list[int] = []
    bus.subscribe(OrderPlaced, name="durable", delivery="durable")(
        lambda e: durable.append(e.number)
    )
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: after.append(e.number)
    )

    async def body(tx: Tx) -> None:
        async with tx.transaction():
            await tx.insert("orders", 1)
            await tx.publish(OrderPlaced(number=1))
            with pytest.raises(BoomError):  # noqa: PT012
                async with tx.transaction():
                    await tx.insert("orders", 2)
                    await tx.publish(OrderPlaced(number=2))
                    async with tx.transaction():  # committed inside the rolled-back one
                        await tx.publish(OrderPlaced(number=3))
                    raise BoomError
            assert tx.in_transaction()  # the outer transaction goes on
            async with tx.transaction():  # a savepoint released: its publishes stay
                await tx.insert("orders", 4)
                await tx.publish(OrderPlaced(number=4))
            await tx.publish(OrderPlaced(number=5))

    app.run(bus, body)
    bus.drain(timeout=10)

    assert sorted(durable) == [1, 4, 5]
    assert sorted(after) == [1, 4, 5]
    assert app.numbers("orders") == [1, 4]  # the savepoint really rolled back
    assert app.outbox_rows("id") == []


@every_transaction
def test_after_commit_handlers_wait_for_the_commit(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    ran = threading.Event()
    seen: list[list[int]] = []

    @bus.subscribe(delivery="after_commit")
    def notify(event: OrderPlaced) -> None:
        seen.append(app.numbers("orders"))  # what another connection sees by then
        ran.set()

    bus.start()

    async def body(tx: Tx) -> None:
        async with tx.transaction():
            await tx.insert("orders", 1)
            await tx.publish(OrderPlaced(number=1))
            await tx.pause(0.3)  # time enough for a handler that did not wait
            assert not ran.is_set(), "an after-commit handler ran before the commit"

    app.run(bus, body)
    assert ran.wait(10), "the after-commit handler did not run after the commit"
    bus.drain(timeout=10)
    assert seen == [[1]]


@every_transaction
def test_after_commit_handlers_are_dropped_on_rollback(app: App) -> None:
    bus = app.make_bus(retry=ZERO_WAIT)
    seen: list[int] = []
    bus.subscribe(OrderPlaced, name="after", delivery="after_commit")(
        lambda e: seen.append(e.number)
    )
    bus.start()

    async def body(tx: Tx) -> None:
        with pytest.raises(BoomError):  # noqa: PT012
            async with tx.transaction():
                await tx.publish(OrderPlaced(number=1))
                raise BoomError
        async with tx.transaction():
            await tx.publish(OrderPlaced(number=2))

    app.run(bus, body)
    bus.drain(timeout=10)
    time.sleep(0.1)
    assert seen == [2]


@every_transaction
def test_an_event_too_large_to_encode_fails_the_publish_and_writes_nothing(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(codec=JSONCodec(REGISTRY, max_size=300))
    inline: list[int] = []
    durable: list[int] = []
    bus.subscribe(OrderPlaced, name="inline")(lambda e: inline.append(e.number))
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: durable.append(e.number))

    async def body(tx: Tx) -> None:
        with pytest.raises(EncodeError):  # noqa: PT012
            async with tx.transaction():
                await tx.insert("orders", 1)
                await tx.publish(OrderPlaced(number=1, note="x" * 1000))

    app.run(bus, body)
    with pytest.raises(EncodeError):
        bus.publish(OrderPlaced(number=2, note="x" * 1000))

    assert app.outbox_rows("id") == []
    assert app.numbers("orders") == []  # the business write rolled back
    assert inline == []  # refused before any handler ran
    bus.publish(OrderPlaced(number=3, note="small"))
    bus.drain(timeout=10)
    assert durable == [3]


@every_store
def test_a_durable_publish_outside_any_scope_commits_its_own_row(app: App) -> None:
    writer = app.make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: None)

    writer.publish(OrderPlaced(number=7), key="k")
    # Committed already: another connection sees it at once.
    assert app.outbox_rows("destination", "attempts", "lease_owner") == [("keep", 0, None)]

    relay = app.make_bus()
    got: list[int] = []
    relay.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))
    relay.publish(OrderPlaced(number=8))
    relay.drain(timeout=10)
    assert sorted(got) == [7, 8]
    assert app.outbox_rows("id") == []


@every_store
def test_a_bus_without_a_relay_writes_rows_but_never_delivers(app: App) -> None:
    bus = app.make_bus(relay=False)
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))

    publish_all(app, bus, range(1, 2))
    bus.publish(OrderPlaced(number=2))
    bus.start()
    bus.drain(timeout=10)
    time.sleep(0.3)

    assert got == []
    assert app.outbox_rows("destination", "attempts", "lease_owner") == [("keep", 0, None)] * 2
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 2


@every_store
def test_concurrent_writers_every_commit_delivered_once_no_rollback_delivered(app: App) -> None:
    """50 transactions at once, with random small delays, a tenth rolled back: the ledger
    of committed numbers equals the ledger of handled ones, with no duplicates."""
    if not app.outbox.backend.concurrent_writers:
        pytest.skip("SQLite has one writer at a time")
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    handled: list[int] = []
    lock = threading.Lock()

    @bus.subscribe(name="count", delivery="durable")
    def count(event: OrderPlaced) -> None:
        with lock:
            handled.append(event.number)

    @bus.subscribe(name="apply", delivery="durable")
    @takes_resource(app)
    def apply(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        app.insert(resource, "effects", event.number)

    bus.start()
    committed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(50)

    def write(number: int) -> None:
        pause = random.Random(number)

        async def body(tx: Tx) -> None:
            with pytest.raises(BoomError) if number % 10 == 0 else nullcontext():
                async with tx.transaction():
                    await tx.insert("orders", number)
                    await tx.pause(pause.uniform(0, 0.02))
                    await tx.publish(OrderPlaced(number=number), key=f"k{number % 5}")
                    await tx.publish(OrderPlaced(number=number + 1000))
                    await tx.pause(pause.uniform(0, 0.03))
                    if number % 10 == 0:
                        raise BoomError
            if number % 10:
                with lock:
                    committed.extend([number, number + 1000])

        try:
            start.wait()
            app.run(bus, body)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    bus.drain(timeout=30)

    assert len(committed) == 90
    assert app.numbers("orders") == sorted(n for n in committed if n < 1000)
    duplicates = [n for n, times in Counter(handled).items() if times > 1]
    assert duplicates == []
    assert sorted(handled) == sorted(committed)
    assert app.numbers("effects") == sorted(committed)  # exactly once, via the inbox
    assert app.outbox_rows("id") == []


# -- the inbox and the handler's own transaction -------------------------------------------


@every_store
def test_a_resource_handler_has_one_effect_when_its_row_is_delivered_twice(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    envelopes: list[Envelope] = []
    calls: list[int] = []

    @bus.subscribe(name="apply", delivery="durable")
    @takes_resource(app)
    def apply(event: OrderPlaced, envelope: Envelope, resource) -> None:  # type: ignore[no-untyped-def]
        calls.append(event.number)
        envelopes.append(envelope)
        app.insert(resource, "effects", event.number)

    publish_all(app, bus, range(1, 2), key=lambda _: "k")
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
    assert app.numbers("effects") == [1, 2]
    assert app.inbox_rows("apply") == 2
    assert app.outbox_rows("id") == []


@every_store
def test_a_resource_handler_has_one_effect_when_duplicates_arrive_in_one_batch(
    app: App,
) -> None:
    app.create_tables()
    writer = app.make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="apply", delivery="durable")(lambda e: None)
    writer.publish(OrderPlaced(number=1))
    ((envelope_id, payload),) = app.outbox_rows("envelope_id", "payload")
    outbox = writer.outbox
    assert outbox is not None
    duplicate = PendingRow(
        uuid.UUID(str(envelope_id)), "bus_over_outbox.order_placed", "apply", None, bytes(payload)
    )
    outbox.write_now([duplicate, duplicate])  # no key: all three are claimed together

    relay = app.make_bus()
    calls: list[int] = []

    @relay.subscribe(name="apply", delivery="durable")
    @takes_resource(app)
    def apply(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        calls.append(event.number)
        app.insert(resource, "effects", event.number)

    relay.start()
    wait_until(lambda: app.outbox_rows("id") == [], timeout=10)
    relay.drain(timeout=10)

    assert app.numbers("effects") == [1]
    assert calls == [1]
    assert app.inbox_rows() == 1


@every_store
def test_a_plain_durable_handler_is_not_run_again_for_a_redelivered_envelope(app: App) -> None:
    bus = app.make_bus(retry=ZERO_WAIT)
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
    assert app.outbox_rows("id") == []


@every_store
def test_a_resource_handler_that_raises_leaves_no_partial_writes(app: App) -> None:
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    attempts: list[int] = []

    @bus.subscribe(name="half", delivery="durable")
    @takes_resource(app)
    def half(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        attempts.append(event.number)
        app.insert(resource, "effects", event.number * 10 + len(attempts))
        if len(attempts) < 3 or event.number == 2:
            raise BoomError("after writing")  # its insert and its inbox mark roll back

    bus.publish(OrderPlaced(number=1))  # fails twice, then succeeds
    bus.drain(timeout=10)
    bus.publish(OrderPlaced(number=2))  # always fails: dead-lettered
    bus.drain(timeout=10)

    assert attempts == [1, 1, 1, 2, 2, 2]
    # Only the successful attempt's write is there; the inbox matches it.
    assert app.numbers("effects") == [13]
    assert app.inbox_rows("half") == 1
    (letter,) = bus.dead_letters.list()
    assert (letter.handler, letter.attempts) == ("half", 3)
    assert app.outbox_rows("id") == []


@every_store
def test_an_async_handler_that_takes_the_resource_is_refused_or_run(app: App) -> None:
    """Never accepted and then silently skipped (its coroutine never awaited)."""
    app.create_tables()
    bus = app.make_bus(retry=ZERO_WAIT)
    ran: list[int] = []

    async def apply(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        ran.append(event.number)
        app.insert(resource, "effects", event.number)

    try:
        bus.subscribe(name="async-apply", delivery="durable")(takes_resource(app)(apply))
    except ConfigurationError:
        return  # refused at subscribe: fine
    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)
    assert ran == [1]
    assert app.numbers("effects") == [1]


@every_store
def test_a_row_the_inbox_holds_is_completed_without_running_its_handler(app: App) -> None:
    writer = app.make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="once", delivery="durable")(lambda e: None)
    publish_all(app, writer, range(6))
    outbox = writer.outbox
    assert outbox is not None
    for peeked in outbox.claim(owner="peek", batch=2, lease=0.001):
        assert outbox.mark("once", peeked.envelope_id)  # handled; its relay then died
    time.sleep(0.01)  # the peek's lease runs out
    bus = app.make_bus()
    ran: list[int] = []
    bus.subscribe(OrderPlaced, name="once", delivery="durable")(lambda e: ran.append(e.number))
    bus.start()
    bus.drain(timeout=20)
    assert sorted(ran) == [2, 3, 4, 5]
    assert outbox.status().pending == 0


# -- failures, retries and what waits in the outbox ---------------------------------------


@every_store
def test_one_failing_durable_handler_does_not_repeat_the_good_one(app: App) -> None:
    bus = app.make_bus(retry=ZERO_WAIT)
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
    assert app.outbox_rows("id") == []
    assert app.inbox_rows("good") == 1


@every_store
def test_retry_later_waits_for_its_delay_in_the_outbox(app: App) -> None:
    bus = app.make_bus(retry=ZERO_WAIT)
    times: list[float] = []
    rows_at_retry: list[list[tuple[Any, ...]]] = []

    @bus.subscribe(name="later", delivery="durable")
    def later(event: OrderPlaced) -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            raise RetryLater(0.2, "not yet")
        rows_at_retry.append(app.outbox_rows("destination", "attempts", "lease_owner"))

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=10)  # the row waiting for its time is in flight: drain waits for it

    assert len(times) == 2
    assert times[1] - times[0] >= 0.18  # the database's clock held it back, not ours
    # During the retry the row was still in the outbox, its first attempt counted.
    [[(destination, attempts, owner)]] = rows_at_retry
    assert (destination, attempts) == ("later", 1)
    assert owner is not None
    assert app.outbox_rows("id") == []
    assert bus.dead_letters.count() == 0


@every_store
def test_drain_stops_waiting_for_a_retry_that_another_relay_took(app: App) -> None:
    """A row put back for a retry is in flight only while it is this relay's: once it is
    due and a claim finds it gone (another relay delivered it), drain returns."""
    bus = app.make_bus(retry=ZERO_WAIT)
    attempts: list[int] = []

    @bus.subscribe(name="later", delivery="durable")
    def later(event: OrderPlaced) -> None:
        attempts.append(event.number)
        raise RetryLater(0.2, "not yet")

    bus.publish(OrderPlaced(number=1))
    wait_until(lambda: app.outbox_rows("attempts", "lease_owner") == [(1, None)])
    app.delete_outbox_rows()  # what another relay's completion does
    bus.drain(timeout=30)  # no TimeoutError: nothing of this process waits any more
    assert attempts == [1]


@every_store
def test_each_key_is_handled_in_publish_order_despite_retries(app: App) -> None:
    bus = app.make_bus(
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
        numbers = range(start, start + 20)
        publish_all(app, bus, numbers, key=lambda number: f"customer-{number % 5}")
        for number in numbers:
            published[f"customer-{number % 5}"].append(number)
    wait_until(lambda: app.outbox_rows("id") == [], timeout=60)
    bus.drain(timeout=10)

    assert len(retried) > 10  # the retries really happened
    assert dict(handled) == dict(published)
    assert bus.dead_letters.count() == 0


@every_store
def test_a_row_for_a_handler_this_bus_does_not_have_stays_in_the_outbox(app: App) -> None:
    writer = app.make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="elsewhere", delivery="durable")(lambda e: None)
    writer.publish(OrderPlaced(number=1))

    relay = app.make_bus()
    here: list[int] = []
    relay.subscribe(OrderPlaced, name="here", delivery="durable")(lambda e: here.append(e.number))
    relay.publish(OrderPlaced(number=2))
    relay.drain(timeout=10)
    time.sleep(0.2)
    relay.drain(timeout=10)

    assert here == [2]
    ((destination, attempts, owner, due),) = app.waiting()
    assert destination == "elsewhere"
    assert attempts == 0  # not a failure of the handler: nothing counts against it
    assert owner is None
    assert due > 1.0
    assert relay.dead_letters.count() == 0


@every_store
def test_a_retry_survives_a_restart(app: App) -> None:
    first = app.make_bus()
    tried: list[int] = []

    @first.subscribe(name="survivor", delivery="durable")
    def flaky(event: OrderPlaced) -> None:
        tried.append(event.number)
        raise RetryLater(1.0, "the service is down")

    first.publish(OrderPlaced(number=1))
    # Not drain(): it would wait for the retry. close() leaves a waiting row in the outbox.
    wait_until(lambda: [a for _, a, o, _ in app.waiting() if o is None] == [1])
    first.close()
    assert tried == [1]
    ((destination, attempts, owner, due),) = app.waiting()
    assert (destination, attempts, owner) == ("survivor", 1, None)
    assert due > 0

    second = app.make_bus()
    got: list[int] = []
    second.subscribe(OrderPlaced, name="survivor", delivery="durable")(
        lambda e: got.append(e.number)
    )
    second.start()
    wait_until(lambda: app.outbox_rows("id") == [], timeout=10)
    assert got == [1]
    assert tried == [1]


# -- the relay's batches -------------------------------------------------------------------


@every_store
def test_the_relay_reports_each_delivered_batch(app: App) -> None:
    bus = app.make_bus(retry=ZERO_WAIT)
    batches: list[tuple[object, tuple[Envelope, ...]]] = []

    def seen(sender: object, *, envelopes: tuple[Envelope, ...]) -> None:
        batches.append((sender, envelopes))

    @bus.subscribe(name="ok", delivery="durable")
    def ok(event: OrderPlaced) -> None: ...

    with hooks.outbox_relayed.connected_to(seen, sender=bus):
        publish_all(app, bus, range(3))
        bus.drain(timeout=10)
    delivered = [envelope.event for _, envelopes in batches for envelope in envelopes]
    assert sorted(event.number for event in delivered) == [0, 1, 2]  # type: ignore[attr-defined]
    assert all(sender is bus for sender, _ in batches)


@every_store
def test_a_mixed_batch_is_settled_as_one(app: App) -> None:
    """Handled, failing, async and resource-taking handlers in one batch: every outcome
    is settled (marks, dead letter, hooks) and every row completed."""
    app.create_tables()
    bus = app.make_bus(retry=NEVER, store={"batch": 50})
    handled: list[tuple[str, int]] = []
    relayed: list[int] = []
    lock = threading.Lock()

    def note(handler: str, number: int) -> None:
        with lock:
            handled.append((handler, number))

    @bus.subscribe(name="sync", delivery="durable")
    def plain(event: OrderPlaced) -> None:
        if event.number == 3:
            raise BoomError("three")
        note("sync", event.number)

    @bus.subscribe(name="async", delivery="durable")
    async def later(event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        note("async", event.number)

    @bus.subscribe(name="own", delivery="durable")
    @takes_resource(app)
    def own(event: OrderPlaced, resource) -> None:  # type: ignore[no-untyped-def]
        app.insert(resource, "effects", event.number)
        note("own", event.number)

    def on_batch(_sender: object, *, envelopes: tuple[Envelope, ...]) -> None:
        relayed.extend(envelope.event.number for envelope in envelopes)  # type: ignore[attr-defined]

    handled_hooks: list[str] = []

    def on_handled(_sender: object, *, envelope: Envelope, handler: str) -> None:
        handled_hooks.append(handler)

    with (
        hooks.outbox_relayed.connected_to(on_batch, sender=bus),
        hooks.event_handled.connected_to(on_handled, sender=bus),
    ):
        publish_all(app, bus, range(5))
        bus.drain(timeout=10)
    expected = {(h, n) for h in ("sync", "async", "own") for n in range(5)} - {("sync", 3)}
    assert sorted(handled) == sorted(expected)
    assert sorted(handled_hooks) == sorted(h for h, _ in expected)
    assert sorted(relayed) == sorted(n for _, n in expected)
    [letter] = bus.dead_letters.list()
    assert (letter.handler, letter.event_name) == ("sync", "bus_over_outbox.order_placed")
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 0
    assert app.numbers("effects") == [0, 1, 2, 3, 4]
    marks = {h: app.inbox_rows(h) for h in ("async", "own", "sync")}
    assert marks == {"async": 5, "own": 5, "sync": 4}


@every_store
def test_per_key_order_holds_with_a_batch_in_hand_and_the_next_claimed(app: App) -> None:
    # Three keys, 50 events each: every batch holds at most one row per key, and the next
    # row of a key is not claimable while the row in hand is left, whichever stage it is in.
    writer = app.make_bus(relay=False, store={"batch": 50})
    writer.subscribe(OrderPlaced, name="ordered", delivery="durable")(lambda _e: None)
    publish_all(app, writer, range(150), key=lambda number: f"k{number % 3}")
    bus = app.make_bus(store={"batch": 50})
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    @bus.subscribe(name="ordered", delivery="durable")
    async def ordered(event: OrderPlaced) -> None:
        await asyncio.sleep(0.001 * (event.number % 5))  # uneven: stages overlap unevenly
        seen[event.number % 3].append(event.number)

    bus.start()
    bus.drain(timeout=60)
    for key, numbers in seen.items():
        assert numbers == list(range(key, 150, 3))
