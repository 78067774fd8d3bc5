"""How the relay works through a batch: the inbox checked in the claim, quick sync handlers
on the claiming worker thread, slow ones spread over the worker threads, and a mixed batch
(handled, failing, async, connection-taking) settled as one; and how batches overlap: the
next claimed while a full one is finished, never after a short one, each key in order.

Real buses on real SQLite outbox files; only the inline time budget is changed, to make a
test independent of how busy the machine is.
"""

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenacity

from eventbus import Envelope, EventBus, EventRegistry, RetryPolicy, event, hooks
from eventbus.outbox import ClaimedRow, PendingRow, SQLiteOutbox
from eventbus.outbox import _local as local_sink

REGISTRY = EventRegistry()


@event("batches.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class BoomError(Exception):
    pass


NEVER = RetryPolicy(stop=tenacity.stop_after_attempt(1), wait=tenacity.wait_none())


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def make_bus(path: Path) -> Iterator[Callable[..., EventBus]]:
    made: list[tuple[EventBus, SQLiteOutbox]] = []

    def make(**options: object) -> EventBus:
        outbox = SQLiteOutbox(path, poll_interval=0.05, lease=5.0, batch=50)
        bus = EventBus(registry=REGISTRY, outbox=outbox, **options)  # type: ignore[arg-type]
        made.append((bus, outbox))
        return bus

    yield make
    for bus, outbox in made:
        bus.close()
        outbox.close()


def publish(bus: EventBus, path: Path, numbers: range) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        with bus.transaction(connection):
            for number in numbers:
                bus.publish(OrderPlaced(number=number))
    finally:
        connection.close()


def test_the_sqlite_claim_says_which_rows_the_inbox_holds(path: Path) -> None:
    outbox = SQLiteOutbox(path)
    try:
        done, fresh = uuid.uuid4(), uuid.uuid4()
        outbox.write_now(
            [
                PendingRow(envelope_id=done, name="n", destination="h", key=None, payload=b"{}"),
                PendingRow(envelope_id=fresh, name="n", destination="h", key=None, payload=b"{}"),
                PendingRow(envelope_id=done, name="n", destination="g", key=None, payload=b"{}"),
            ]
        )
        assert outbox.mark("h", done)
        rows = outbox.claim(owner="me", batch=10, lease=5.0)
        assert [(row.destination, row.envelope_id, row.seen) for row in rows] == [
            ("h", done, True),
            ("h", fresh, False),
            ("g", done, False),  # the inbox is per handler: g has not seen it
        ]
    finally:
        outbox.close()


def test_the_sqlite_claim_looks_up_the_inbox_by_its_key_not_by_a_scan(path: Path) -> None:
    # Without the unary + in the claim's RETURNING, SQLite 3.40 scans the whole inbox for
    # every claimed row: the relay slows down as the inbox grows.
    from eventbus.outbox._sqlite import _CLAIM

    SQLiteOutbox(path).close()
    connection = sqlite3.connect(path)
    try:
        plan = connection.execute(
            "EXPLAIN QUERY PLAN " + _CLAIM, {"owner": "me", "lease": 1.0, "batch": 10}
        ).fetchall()
    finally:
        connection.close()
    inbox = [detail for *_, detail in plan if " i " in f" {detail} "]
    assert inbox, plan
    assert all(detail.startswith("SEARCH i USING") for detail in inbox), inbox


def test_a_row_the_inbox_holds_is_completed_without_running_its_handler(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    bus = make_bus()
    ran: list[int] = []
    bus.subscribe(OrderPlaced, name="once", delivery="durable")(lambda e: ran.append(e.number))
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="once", delivery="durable")(lambda e: None)
    publish(writer, path, range(3))
    outbox = writer.outbox
    assert outbox is not None
    first = outbox.claim(owner="peek", batch=1, lease=0.001)[0]
    assert outbox.mark("once", first.envelope_id)  # as a relay that died before deleting
    time.sleep(0.01)  # the peek's lease runs out
    bus.start()
    bus.drain(timeout=10)
    assert sorted(ran) == [1, 2]
    assert outbox.status().pending == 0


def test_quick_sync_handlers_run_on_the_claiming_thread(
    make_bus: Callable[..., EventBus], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_sink, "_INLINE_BUDGET", 60.0)  # whatever the machine's load
    bus = make_bus()
    threads: set[str] = set()
    bus.subscribe(OrderPlaced, name="quick", delivery="durable")(
        lambda _e: threads.add(threading.current_thread().name)
    )
    publish(bus, path, range(40))
    bus.drain(timeout=10)
    assert len(threads) == 1
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 0


def test_slow_sync_handlers_spread_over_the_worker_threads(
    make_bus: Callable[..., EventBus], path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_sink, "_INLINE_BUDGET", -1.0)  # always past: all fan out
    bus = make_bus()
    threads: set[str] = set()
    both = threading.Barrier(2, timeout=5)

    @bus.subscribe(name="slow", delivery="durable")
    def slow(event: OrderPlaced) -> None:
        threads.add(threading.current_thread().name)
        if event.number < 2:
            both.wait()  # only returns when two handlers run at the same time

    publish(bus, path, range(8))
    bus.drain(timeout=10)
    assert len(threads) >= 2
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 0


def test_a_mixed_batch_is_settled_as_one(
    make_bus: Callable[..., EventBus], path: Path, tmp_path: Path
) -> None:
    bus = make_bus(retry=NEVER)
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
    def own(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        connection.execute("CREATE TABLE IF NOT EXISTS effects (number INTEGER)")
        connection.execute("INSERT INTO effects VALUES (?)", (event.number,))
        note("own", event.number)

    def on_batch(_sender: object, *, envelopes: tuple[Envelope, ...]) -> None:
        relayed.extend(envelope.event.number for envelope in envelopes)

    handled_hooks: list[str] = []

    def on_handled(_sender: object, *, envelope: Envelope, handler: str) -> None:
        handled_hooks.append(handler)

    with (
        hooks.outbox_relayed.connected_to(on_batch, sender=bus),
        hooks.event_handled.connected_to(on_handled, sender=bus),
    ):
        publish(bus, path, range(5))
        bus.drain(timeout=10)
    expected = {(h, n) for h in ("sync", "async", "own") for n in range(5)} - {("sync", 3)}
    assert sorted(handled) == sorted(expected)
    assert sorted(handled_hooks) == sorted(h for h, _ in expected)
    assert sorted(relayed) == sorted(n for _, n in expected)
    [letter] = bus.dead_letters.list()
    assert (letter.handler, letter.event_name) == ("sync", "batches.order_placed")
    outbox = bus.outbox
    assert outbox is not None
    assert outbox.status().pending == 0
    connection = sqlite3.connect(path)
    try:
        effects = sorted(n for (n,) in connection.execute("SELECT number FROM effects"))
        marks = connection.execute(
            "SELECT handler, COUNT(*) FROM eventbus_inbox GROUP BY handler ORDER BY handler"
        ).fetchall()
    finally:
        connection.close()
    assert effects == [0, 1, 2, 3, 4]
    assert marks == [("async", 5), ("own", 5), ("sync", 4)]


def test_a_delivery_whose_completion_fails_is_still_reported_handled(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another writer holds SQLite's write lock past the busy timeout while the relay
    completes a batch: the handler did return, so event_handled is sent; the row waits
    for its lease and is delivered again (a plain handler is at least once)."""
    outbox = SQLiteOutbox(path, poll_interval=0.05, lease=0.5, timeout=0.2)
    bus = EventBus(registry=REGISTRY, outbox=outbox, shutdown_timeout=2.0)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reported: list[int] = []
    ran: list[int] = []

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced) -> None:
        ran.append(event.number)
        if len(ran) == 1:
            holder.execute("BEGIN IMMEDIATE")  # released once the hook has been sent

    def on_handled(_sender: object, *, envelope: Envelope, handler: str) -> None:
        reported.append(envelope.event.number)
        if holder.in_transaction:
            holder.execute("ROLLBACK")

    try:
        with hooks.event_handled.connected_to(on_handled, sender=bus):
            bus.publish(OrderPlaced(number=7))
            deadline = time.monotonic() + 10
            while (len(ran) < 2 or outbox.status().pending) and time.monotonic() < deadline:
                time.sleep(0.02)
            bus.drain(timeout=5)
    finally:
        bus.close()
        holder.close()
        outbox.close()
    assert ran == [7, 7]
    assert reported == [7, 7]
    assert "could not settle a batch" in caplog.text


def claim_sizes(bus: EventBus) -> list[int]:
    """The number of rows each claim of ``bus``'s relay returns, kept as they happen."""
    outbox = bus.outbox
    assert isinstance(outbox, SQLiteOutbox)
    sizes: list[int] = []
    claim = outbox.claim

    def counting_claim(**options: Any) -> list[ClaimedRow]:
        rows = claim(**options)
        sizes.append(len(rows))
        return rows

    outbox.claim = counting_claim  # type: ignore[method-assign]
    return sizes


def test_the_next_batch_is_claimed_while_one_is_being_finished(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    # Batches of 50; the async handler of the first batch's first event only returns
    # once the relay has claimed the second batch (or gives up after 5 s).
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="slowly", delivery="durable")(lambda _e: None)
    publish(writer, path, range(100))
    bus = make_bus()
    sizes = claim_sizes(bus)
    overlapped: list[bool] = []

    @bus.subscribe(name="slowly", delivery="durable")
    async def slowly(event: OrderPlaced) -> None:
        if event.number == 0:
            deadline = time.monotonic() + 5
            while len([size for size in sizes if size]) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            overlapped.append(len([size for size in sizes if size]) >= 2)

    bus.start()
    bus.drain(timeout=20)
    assert overlapped == [True]
    assert [size for size in sizes if size] == [50, 50]
    assert bus.outbox is not None
    assert bus.outbox.status().pending == 0


def test_after_a_short_batch_the_next_claim_waits_for_its_completion(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    # 30 rows, batches of 50: the first claim takes all there is. Claiming again before
    # its completion would find nothing but the rows it unblocks, at the price of a scan.
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="short", delivery="durable")(lambda _e: None)
    publish(writer, path, range(30))
    bus = make_bus()
    claims = claim_sizes(bus)
    during: list[int] = []

    @bus.subscribe(name="short", delivery="durable")
    async def short(event: OrderPlaced) -> None:
        if event.number == 0:
            await asyncio.sleep(0.3)  # time enough for an early claim to show
            during.append(len(claims))

    bus.start()
    bus.drain(timeout=20)
    assert during == [1]
    assert claims[0] == 30
    assert bus.outbox is not None
    assert bus.outbox.status().pending == 0


def test_per_key_order_holds_with_a_batch_in_hand_and_the_next_claimed(
    make_bus: Callable[..., EventBus], path: Path
) -> None:
    # Three keys, 50 events each: every batch holds at most one row per key, and the next
    # row of a key is not claimable while the row in hand is left, whichever stage it is in.
    writer = make_bus(relay=False)
    writer.subscribe(OrderPlaced, name="ordered", delivery="durable")(lambda _e: None)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        with writer.transaction(connection):
            for number in range(150):
                writer.publish(OrderPlaced(number=number), key=f"k{number % 3}")
    finally:
        connection.close()
    bus = make_bus()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}

    @bus.subscribe(name="ordered", delivery="durable")
    async def ordered(event: OrderPlaced) -> None:
        await asyncio.sleep(0.001 * (event.number % 5))  # uneven: stages overlap unevenly
        seen[event.number % 3].append(event.number)

    bus.start()
    bus.drain(timeout=60)
    for key, numbers in seen.items():
        assert numbers == list(range(key, 150, 3))
