"""The memory transport passes the transport contract (it is the reference)."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any, ClassVar

import pytest

from eventbus import EventBus, SQLiteOutbox
from eventbus.errors import ConfigurationError
from eventbus.transports import MemoryTransport, transport_from_url
from eventbus.typing import Transport
from tests.transports.bus_contract import REGISTRY, BusOverTransport, OrderPlaced
from tests.transports.contract import TransportContract, message


class TestMemoryTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = MemoryTransport

    async def make(self, **options: Any) -> Transport:
        transport = MemoryTransport.from_url(f"memory://{uuid.uuid4().hex}", **options)
        await transport.connect()
        return transport


def test_named_brokers_are_shared_and_unnamed_ones_private() -> None:
    name = uuid.uuid4().hex
    assert transport_from_url(f"memory://{name}")._broker is MemoryTransport(name)._broker  # type: ignore[attr-defined]
    assert MemoryTransport()._broker is not MemoryTransport()._broker


async def test_two_transports_on_one_named_broker_talk() -> None:
    name = uuid.uuid4().hex
    publisher, consumer = MemoryTransport(name), MemoryTransport(name)
    iterator = consumer.subscribe(["a.b"], group="g")
    await publisher.publish("a.b", message("a.b", b"hi"))
    received = await iterator.__anext__()
    assert received.body == b"hi"
    await received.ack()
    assert consumer.pending("g") == 0
    await iterator.aclose()


def test_from_url_refuses_options_and_other_schemes() -> None:
    with pytest.raises(ConfigurationError, match="MemoryTransport has no option 'batch'"):
        MemoryTransport.from_url("memory://", batch=3)
    with pytest.raises(ConfigurationError, match="unknown option 'prefix'"):
        MemoryTransport.from_url("memory://shop?prefix=x")
    with pytest.raises(ConfigurationError, match="memory://"):
        MemoryTransport.from_url("redis://127.0.0.1")


class TestBusOverMemory(BusOverTransport):
    transport_class: ClassVar[type[Transport]] = MemoryTransport

    async def make_transport(self) -> Transport:
        return MemoryTransport(self.namespace)


def test_drain_waits_until_the_worker_handled_what_the_relay_forwarded(tmp_path) -> None:
    """A sync application (no asyncio in sight) on memory://: drain() means handled."""
    seen: list[str] = []
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=5.0)
    bus = EventBus(registry=REGISTRY, outbox=outbox, transport_url="memory://")

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None:
        seen.append(event.order_id)

    connection = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    try:
        for number in range(50):
            with bus.transaction(connection):
                bus.publish(OrderPlaced(order_id=f"o-{number}"), key=f"k{number % 3}")
        bus.drain(timeout=30)
        assert len(seen) == 50
        assert isinstance(bus.transport, MemoryTransport)
        assert outbox.status().pending == 0
    finally:
        connection.close()
        bus.close()
        outbox.close()
