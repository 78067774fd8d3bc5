"""How the in-process relay works through a batch: quick sync handlers on the claiming
worker thread, slow ones spread over the worker threads; and how batches overlap: the next
claimed while a full one is finished, never after a short one.

Real buses on real SQLite outbox files; only the inline time budget is changed, to make a
test independent of how busy the machine is. What the relay promises over every store
(rows the inbox holds, a mixed batch settled as one, each key in order with batches in
flight) is in tests/contract/test_bus_over_outbox.py; what is about SQLite's claim and
lock, in tests/contract/test_outbox_sqlite.py and test_bus_over_sqlite.py.
"""

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenacity

from eventbus import EventBus, EventRegistry, RetryPolicy, event
from eventbus.outbox import ClaimedRow, SQLiteOutbox
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
