"""A bus stops and starts again; only ``close()`` is final.

The ASGI pattern: a lifespan runs ``await bus.astart()`` at startup and ``await
bus.astop()`` at shutdown, and a test suite runs the application many times, each on an
event loop of its own (``TestClient(app)`` makes one per client). Each stop finishes
what is in flight and stops the runtime, the relay and the worker; each start brings
them back on the loop there is now. Sync applications have ``start()``/``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from eventbus import BusClosedError, ConfigurationError, EventBus, EventRegistry, event
from eventbus.outbox import SQLiteOutbox
from eventbus.transports import MemoryTransport

REGISTRY = EventRegistry()


@event("lifecycle.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


Seen = list[tuple[str, str, asyncio.AbstractEventLoop | None]]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[SQLiteOutbox]:
    store = SQLiteOutbox(tmp_path / "app.db", poll_interval=30.0)  # commits wake the relay
    yield store
    store.close()


def subscribe_both(bus: EventBus, seen: Seen) -> None:
    """An after-commit and a durable handler, both async: each records its loop."""

    @bus.subscribe(name="notify", delivery="after_commit")
    async def notify(event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        seen.append(("notify", event.order_id, asyncio.get_running_loop()))

    @bus.subscribe(name="keep", delivery="durable")
    async def keep(event: OrderPlaced) -> None:
        await asyncio.sleep(0)
        seen.append(("keep", event.order_id, asyncio.get_running_loop()))


def lifespan_of(bus: EventBus) -> Callable[[], contextlib.AbstractAsyncContextManager[None]]:
    """What a FastAPI ``lifespan=`` does with the bus."""

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        await bus.astart()
        try:
            yield
        finally:
            await bus.astop()

    return lifespan


def serve(bus: EventBus, order_id: str) -> asyncio.AbstractEventLoop:
    """One application lifetime on a new loop: startup, a request that publishes (and
    returns before the handlers run), shutdown."""
    lifespan = lifespan_of(bus)

    async def lifetime() -> asyncio.AbstractEventLoop:
        async with lifespan():
            await bus.apublish(OrderPlaced(order_id=order_id))
        return asyncio.get_running_loop()

    return asyncio.run(lifetime())


def test_a_lifespan_stops_the_bus_and_the_next_one_starts_it_on_its_own_loop(
    outbox: SQLiteOutbox,
) -> None:
    bus = EventBus(registry=REGISTRY, outbox=outbox)
    seen: Seen = []
    subscribe_both(bus, seen)

    first = serve(bus, "o-1")
    second = serve(bus, "o-2")

    assert first is not second
    assert sorted((name, order) for name, order, _ in seen) == [
        ("keep", "o-1"),
        ("keep", "o-2"),
        ("notify", "o-1"),
        ("notify", "o-2"),
    ]
    # Each delivery ran on the loop of its own lifetime, the one the app's resources use.
    assert {loop for _, order, loop in seen if order == "o-1"} == {first}
    assert {loop for _, order, loop in seen if order == "o-2"} == {second}
    assert outbox.status().pending == 0
    assert bus.closed is False
    bus.close()


def test_a_lifespan_restarts_the_worker_of_a_transport_too(outbox: SQLiteOutbox) -> None:
    """Durable events through a broker: each start connects a new transport (made from
    the URL) and a new worker; each stop lets the worker finish and closes them."""
    bus = EventBus(
        registry=REGISTRY, outbox=outbox, transport_url=f"memory://lifecycle-{uuid.uuid4().hex}"
    )
    seen: Seen = []
    subscribe_both(bus, seen)

    serve(bus, "o-3")
    first_transport = bus.transport
    serve(bus, "o-4")

    assert bus.transport is not first_transport
    assert sorted((name, order) for name, order, _ in seen) == [
        ("keep", "o-3"),
        ("keep", "o-4"),
        ("notify", "o-3"),
        ("notify", "o-4"),
    ]
    assert outbox.status().pending == 0
    bus.close()


def test_a_transport_given_as_an_instance_cannot_start_again_and_says_why(
    outbox: SQLiteOutbox,
) -> None:
    bus = EventBus(registry=REGISTRY, outbox=outbox, transport=MemoryTransport())
    seen: Seen = []
    subscribe_both(bus, seen)
    serve(bus, "o-5")
    assert sorted(name for name, _, _ in seen) == ["keep", "notify"]

    with pytest.raises(ConfigurationError, match="transport_url"):
        serve(bus, "o-6")
    bus.close()


def test_a_sync_application_stops_and_starts_again(outbox: SQLiteOutbox) -> None:
    bus = EventBus(registry=REGISTRY, outbox=outbox)
    done: list[tuple[str, str]] = []
    lock = threading.Lock()

    @bus.subscribe(name="notify", delivery="after_commit")
    def notify(event: OrderPlaced) -> None:
        time.sleep(0.05)  # still running when stop() is called: stop finishes it
        with lock:
            done.append(("notify", event.order_id))

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced) -> None:
        with lock:
            done.append(("keep", event.order_id))

    for order_id in ("o-7", "o-8"):
        bus.start()
        bus.publish(OrderPlaced(order_id=order_id))
        bus.stop()
        assert sorted(done) == [("keep", order_id), ("notify", order_id)]
        done.clear()
    bus.publish(OrderPlaced(order_id="o-9"))  # a stopped bus starts again by itself
    bus.drain(timeout=10)
    assert sorted(done) == [("keep", "o-9"), ("notify", "o-9")]
    bus.close()


def test_stop_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    bus = EventBus(registry=REGISTRY)
    bus.subscribe(OrderPlaced, name="notify", delivery="after_commit")(lambda event: None)
    bus.publish(OrderPlaced(order_id="o-10"))
    started = {t for t in threading.enumerate() if t not in before}
    assert any(t.name == "eventbus-runtime" for t in started)
    bus.stop()
    for thread in started:
        thread.join(10)
    assert not [t for t in started if t.is_alive()]
    bus.close()


def test_close_is_final_unlike_stop() -> None:
    bus = EventBus(registry=REGISTRY)
    bus.start()
    bus.stop()
    bus.start()
    bus.close()
    with pytest.raises(BusClosedError):
        bus.start()
    with pytest.raises(BusClosedError):
        asyncio.run(bus.astart())
    with pytest.raises(BusClosedError):
        bus.publish(OrderPlaced(order_id="o-11"))
    bus.stop()  # harmless on a closed bus
    bus.close()


def test_async_with_closes_the_bus() -> None:
    """``async with bus`` keeps its meaning: start, then close for good."""

    async def main(bus: EventBus) -> None:
        async with bus:
            await bus.apublish(OrderPlaced(order_id="o-12"))

    bus = EventBus(registry=REGISTRY)
    asyncio.run(main(bus))
    assert bus.closed is True
    with pytest.raises(BusClosedError):
        asyncio.run(main(bus))


def test_stop_from_the_runtimes_own_loop_is_refused_with_the_async_form() -> None:
    async def main() -> None:
        bus = EventBus(registry=REGISTRY)
        await bus.astart()
        with pytest.raises(RuntimeError, match="astop"):
            bus.stop()
        await bus.astop()
        await bus.astart()  # and the same loop may start it again
        await bus.aclose()

    asyncio.run(main())


def test_an_after_commit_delivery_a_stop_cuts_short_is_kept_and_replays() -> None:
    """``stop()`` with a handler still running past ``shutdown_timeout``: the delivery is
    kept as a dead letter that says so, and replays once the handler can finish."""
    bus = EventBus(registry=REGISTRY, shutdown_timeout=0.2)
    release = threading.Event()
    done: list[str] = []

    @bus.subscribe(name="lifecycle.slow", delivery="after_commit")
    def slow(event: OrderPlaced) -> None:
        if not release.is_set():
            release.wait(5)  # holds its worker thread past the stop
            return
        done.append(event.order_id)

    try:
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.stop()
        [letter] = bus.dead_letters.list()
        assert letter.handler == "lifecycle.slow"
        assert letter.error_type == "eventbus.errors.DeliveryCancelledError"
        assert letter.message == (
            "lifecycle.slow did not finish before the bus stopped (shutdown_timeout 0.2s); "
            "it may have run part way"
        )
        release.set()
        assert bus.replay(letter.id).ok
        assert done == ["o-1"]
        assert bus.dead_letters.count() == 0
    finally:
        release.set()
        bus.close()
