"""The machinery below the bus stands on its own: a relay and a worker built from a
``Context`` of parts, with no ``EventBus`` anywhere; and the forwarder, which moves the
stored bytes and decodes them only for a receiver of ``outbox_relayed``.

Real SQLite outbox files, a real memory transport, a real runtime.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from eventbus import (
    Envelope,
    EventRegistry,
    JSONCodec,
    MemoryDeadLetterStore,
    RetryPolicy,
    SQLiteOutbox,
    event,
    hooks,
)
from eventbus._context import Context
from eventbus._handlers import HandlerTable, inspect_handler
from eventbus._records import FORWARD
from eventbus._runtime import Runtime
from eventbus._transactions import Transactions
from eventbus.outbox import PendingRow, Relay
from eventbus.outbox._local import LocalHandlers
from eventbus.transports import MemoryTransport, Message
from eventbus.transports._forward import Forwarder
from eventbus.transports._link import TransportLink
from eventbus.transports._worker import MemoryInbox, Worker
from eventbus.typing import Codec, OutboxStore

REGISTRY = EventRegistry()


@event("seams.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class Sender:
    """What the hooks name as their sender here, where there is no bus."""


def envelope(number: int) -> Envelope:
    envelope_id = uuid.uuid4()
    return Envelope(
        id=envelope_id,
        name="seams.order_placed",
        version=1,
        occurred_at=datetime.now(UTC),
        event=OrderPlaced(number=number),
        correlation_id=envelope_id,
    )


def rows(codec: Codec, destination: str, numbers: range) -> list[PendingRow]:
    made = [envelope(number) for number in numbers]
    return [PendingRow(e.id, e.name, destination, e.key, codec.encode(e)) for e in made]


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    made = Runtime(workers=2)
    made.start()
    yield made
    made.close(5.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteOutbox]:
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
    yield outbox
    outbox.close()


def context_of(runtime: Runtime, store: OutboxStore | None, sender: object) -> Context:
    return Context(
        runtime=runtime,
        registry=REGISTRY,
        codec=JSONCodec(REGISTRY),
        handlers=HandlerTable(),
        dead_letters=MemoryDeadLetterStore(),
        retry=RetryPolicy.never(),
        transactions=Transactions(store),
        sender=sender,
    )


def subscribe(context: Context, fn: Callable[..., Any], name: str) -> None:
    context.handlers.add(inspect_handler(fn, None, name=name, delivery="durable"))


def run(runtime: Runtime, relay: Relay) -> None:
    relay.active = True
    runtime.service(relay.run)
    relay.nudge()


def test_a_relay_delivers_to_handlers_with_no_bus(runtime: Runtime, store: SQLiteOutbox) -> None:
    sender = Sender()
    context = context_of(runtime, store, sender)
    seen: list[int] = []
    lock = threading.Lock()

    def charge(event: OrderPlaced) -> None:
        with lock:
            seen.append(event.number)

    def refuse(event: OrderPlaced) -> None:
        raise RuntimeError(f"cannot take {event.number}")

    subscribe(context, charge, "billing.charge")
    subscribe(context, refuse, "billing.refuse")
    store.write_now(rows(context.codec, "billing.charge", range(5)))
    store.write_now(rows(context.codec, "billing.refuse", range(1)))
    relay = Relay(store, LocalHandlers(context, store), runtime=runtime)
    failed: list[object] = []

    def on_failed(got: object, **_: object) -> None:
        failed.append(got)

    with hooks.handler_failed.connected_to(on_failed, sender=sender):
        run(runtime, relay)
        wait_for(lambda: store.status().pending == 0)
    runtime.call(relay.aclose(5.0), 10.0)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    (letter,) = context.dead_letters.list()
    assert (letter.handler, letter.message) == ("billing.refuse", "cannot take 0")
    assert failed == [sender]  # the hooks name the context's sender


def test_a_worker_runs_handlers_on_a_transport_with_no_bus(runtime: Runtime) -> None:
    context = context_of(runtime, None, Sender())
    seen: list[int] = []

    def charge(event: OrderPlaced) -> None:
        seen.append(event.number)

    subscribe(context, charge, "billing.charge")
    transport = MemoryTransport()
    worker = Worker(context, transport, MemoryInbox(), group="g", max_deliveries=3)
    assert worker.topics() == ["seams.order_placed"]
    runtime.service(worker.run)
    twice = envelope(7)
    body = context.codec.encode(twice)
    for count in (1, 2):  # delivered again after it was handled: the inbox says so
        message = Message(twice.id, twice.name, None, body)
        runtime.call(transport.publish("seams.order_placed", message), 5.0)
        wait_for(lambda count=count: worker.handled == count)
    worker.stop()
    assert seen == [7]
    assert transport.pending("g") == 0


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "unobserved"])
def test_the_forwarder_publishes_stored_bytes_and_decodes_only_for_a_receiver(
    runtime: Runtime, store: SQLiteOutbox, observed: bool
) -> None:
    sender = Sender()
    base = context_of(runtime, store, sender)
    decoded: list[int] = []

    class CountingCodec(JSONCodec):
        def decode(self, data: Any) -> Envelope:
            decoded.append(1)
            return super().decode(data)

    context = Context(
        runtime=runtime,
        registry=REGISTRY,
        codec=CountingCodec(REGISTRY),
        handlers=base.handlers,
        dead_letters=base.dead_letters,
        retry=base.retry,
        transactions=base.transactions,
        sender=sender,
    )
    transport = MemoryTransport()
    consumer = transport.subscribe(["seams.order_placed"], group="elsewhere")  # the group
    forwarded = rows(context.codec, FORWARD, range(3))
    store.write_now(forwarded)
    link = TransportLink(transport, group="g", max_deliveries=3)
    relay = Relay(store, Forwarder(link, context, LocalHandlers(context, store)), runtime=runtime)
    relayed: list[tuple[Envelope, ...]] = []

    def on_relayed(_sender: object, *, envelopes: tuple[Envelope, ...]) -> None:
        relayed.append(envelopes)

    async def take(count: int) -> list[bytes]:
        bodies = []
        for _ in range(count):
            received = await consumer.__anext__()
            bodies.append(received.body)
            await received.ack()
        await consumer.aclose()  # type: ignore[attr-defined]
        return bodies

    with hooks.outbox_relayed.connected_to(on_relayed, sender=sender if observed else Sender()):
        run(runtime, relay)
        bodies = runtime.call(take(3), 10.0)
        wait_for(lambda: store.status().pending == 0)
        runtime.call(relay.aclose(5.0), 10.0)
    assert bodies == [row.payload for row in forwarded]  # the stored bytes, as they were
    if observed:
        numbers = [e.event.number for batch in relayed for e in batch]
        assert sorted(numbers) == [0, 1, 2]
        assert len(decoded) == 3
    else:
        assert relayed == []
        assert decoded == []  # nobody listens to this bus's hook: nothing is decoded


def test_a_relay_is_built_from_a_store_and_a_sink_and_nothing_else() -> None:
    """The outbox knows nothing of transports, handlers or buses: what a relay needs."""
    import inspect

    parameters = list(inspect.signature(Relay).parameters)
    assert parameters == ["store", "sink", "runtime"]
    assert asyncio.iscoroutinefunction(Relay.run)
