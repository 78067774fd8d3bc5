"""What the bus does only with the stdlib SQLite store: another writer holding the
database's one write lock past the store's busy timeout.

What every store promises the bus is in test_bus_over_outbox.py, which runs on
``SQLiteOutbox`` too; the store's own promises are in test_outbox_contract.py and
test_outbox_sqlite.py.
"""

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventbus import Envelope, EventBus, EventRegistry, event, hooks
from eventbus.outbox import SQLiteOutbox

REGISTRY = EventRegistry()


@event("bus_over_sqlite.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def rows_in(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        return int(connection.execute("SELECT COUNT(*) FROM eventbus_outbox").fetchone()[0])
    finally:
        connection.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s")
        time.sleep(0.02)


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

    wait_until(lambda: 2 in got and rows_in(path) == 0, timeout=8)
    bus.drain(timeout=5)
    assert sorted(set(got)) == [1, 2]  # 1 may run twice: a plain handler is at least once


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
        reported.append(envelope.event.number)  # type: ignore[attr-defined]
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
