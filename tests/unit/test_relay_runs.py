"""Runs: a store that claims several rows of one key at once (``SupportsClaimRuns``).

The relay asks for runs only where the store can and its sink keeps a run's order: this
process's handlers always do; a transport only where it declares ``ordered_batches``.
A run is delivered in order, and after the first row of a key that fails, the key's later
rows of the batch are held back (put back without an attempt counted): a later row never
runs before an earlier row of its key succeeded or was dead-lettered.

The store here is ``SQLiteOutbox`` with a run claim written in Python over the same
table (the real stores' run claims are SQL of their own, tested with them): it keeps the
claim invariant for each run's head, and records what each claim returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenacity

from eventbus import EventBus, EventRegistry, RetryPolicy, event
from eventbus.outbox import ClaimedRow, SQLiteOutbox
from eventbus.transports import Capabilities, MemoryTransport
from eventbus.typing import SupportsClaimRuns

REGISTRY = EventRegistry()
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_COLUMNS = "id, envelope_id, name, destination, key, payload, attempts, created_at, first_failed_at"
RETRY = RetryPolicy(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_none())


@event("runs.step", registry=REGISTRY)
class Step:
    number: int


class RunsOutbox(SQLiteOutbox):
    """The SQLite outbox (which claims runs: ``SupportsClaimRuns``), telling what the relay
    asked of it and the longest run of a key it leased."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.per_key_asked: list[int] = []
        self.longest_run = 0

    def claim(self, *, owner: str, batch: int, lease: float, per_key: int = 1) -> list[ClaimedRow]:
        self.per_key_asked.append(per_key)
        rows = super().claim(owner=owner, batch=batch, lease=lease, per_key=per_key)
        by_key: dict[object, int] = {}
        for row in rows:
            by_key[row.key] = by_key.get(row.key, 0) + 1
        self.longest_run = max([self.longest_run, *by_key.values()])
        return rows


class UnorderedTransport(MemoryTransport):
    """A memory broker that does not promise to keep a batch's order when part fails."""

    capabilities = Capabilities(
        persistent=False, ordered_per_key=True, consumer_groups=True, counts_deliveries=True
    )


@pytest.fixture
def make_bus(tmp_path: Path) -> Iterator[Callable[..., EventBus]]:
    made: list[EventBus] = []

    def make(**options: Any) -> EventBus:
        outbox = RunsOutbox(tmp_path / "app.db", poll_interval=0.05, lease=5.0, batch=50)
        bus = EventBus(registry=REGISTRY, outbox=outbox, **{"retry": RETRY, **options})
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()
        bus.outbox.close()  # type: ignore[union-attr]


def store_of(bus: EventBus) -> RunsOutbox:
    outbox = bus.outbox
    assert isinstance(outbox, RunsOutbox)
    return outbox


def publish(bus: EventBus, numbers: range, *, keys: int = 1) -> None:
    connection = store_of(bus).connect()
    try:
        with bus.transaction(connection):
            for number in numbers:
                bus.publish(Step(number=number), key=f"k{number % keys}")
    finally:
        connection.close()  # the application's connection: the store does not close it


def test_the_store_declares_runs_and_the_relay_asks_for_them(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    got: list[int] = []
    bus.subscribe(Step, name="record", delivery="durable")(lambda e: got.append(e.number))
    assert isinstance(store_of(bus), SupportsClaimRuns)
    publish(bus, range(40))
    bus.start()
    bus.drain(timeout=30)
    assert got == list(range(40))
    assert store_of(bus).longest_run > 1
    assert max(store_of(bus).per_key_asked) > 1


def test_a_failure_holds_back_the_rest_of_its_run_and_order_holds(
    make_bus: Callable[..., EventBus],
) -> None:
    bus = make_bus()
    attempts: list[int] = []
    done: list[int] = []
    failing = {3: 2, 7: 1, 12: 1}  # number -> failures before it succeeds

    too_early: list[int] = []

    @bus.subscribe(name="flaky", delivery="durable")
    def flaky(step: Step) -> None:
        number = step.number
        attempts.append(number)
        if not set(range(number % 2, number, 2)) <= set(done):
            too_early.append(number)  # ran before an earlier row of its key succeeded
        if failing.get(number, 0):
            failing[number] -= 1
            raise RuntimeError(f"not yet {number}")
        done.append(number)

    publish(bus, range(20), keys=2)
    bus.start()
    bus.drain(timeout=30)
    assert too_early == []
    for key in (0, 1):
        assert [n for n in done if n % 2 == key] == list(range(key, 20, 2))
    assert sorted(done) == list(range(20))
    assert store_of(bus).status().pending == 0
    # The held-back rows were put back uncounted: only the failing rows spent attempts.
    assert attempts.count(3) == 3
    assert attempts.count(7) == 2
    assert attempts.count(12) == 2
    assert store_of(bus).longest_run > 1


def test_a_dead_lettered_row_lets_its_key_go_on(make_bus: Callable[..., EventBus]) -> None:
    once = RetryPolicy(stop=tenacity.stop_after_attempt(1), wait=tenacity.wait_none())
    bus = make_bus(retry=once)
    done: list[int] = []

    @bus.subscribe(name="strict", delivery="durable")
    def strict(step: Step) -> None:
        if step.number == 4:
            raise ValueError("four is refused")
        done.append(step.number)

    publish(bus, range(10))
    bus.start()
    bus.drain(timeout=30)
    assert done == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    [letter] = bus.dead_letters.list()
    assert letter.handler == "strict"
    assert letter.attempts == 1


def test_async_handlers_take_a_run_in_order(make_bus: Callable[..., EventBus]) -> None:
    bus = make_bus()
    done: list[int] = []
    failed = {5: 1}

    @bus.subscribe(name="slow", delivery="durable")
    async def slow(step: Step) -> None:
        await asyncio.sleep(0.001 * (step.number % 3))  # rows of other keys overtake
        if failed.get(step.number):
            failed[step.number] -= 1
            raise RuntimeError("once")
        done.append(step.number)

    publish(bus, range(24), keys=3)
    bus.start()
    bus.drain(timeout=30)
    for key in range(3):
        assert [n for n in done if n % 3 == key] == list(range(key, 24, 3))
    assert store_of(bus).longest_run > 1


def test_forwarding_takes_runs_only_where_the_transport_keeps_a_batch_in_order(
    make_bus: Callable[..., EventBus],
) -> None:
    ordered = make_bus(transport_url="memory://")
    got: list[int] = []
    ordered.subscribe(Step, name="record", delivery="durable")(lambda e: got.append(e.number))
    publish(ordered, range(30))
    ordered.start()
    ordered.drain(timeout=30)
    assert got == list(range(30))
    assert store_of(ordered).longest_run > 1
    ordered.close()

    unordered = make_bus(transport=UnorderedTransport())
    seen: list[int] = []
    unordered.subscribe(Step, name="record", delivery="durable")(lambda e: seen.append(e.number))
    store = store_of(unordered)
    store.per_key_asked.clear()
    publish(unordered, range(30, 40))
    unordered.start()
    unordered.drain(timeout=30)
    assert seen == list(range(30, 40))
    assert set(store.per_key_asked) == {1}
