"""The memory transport passes the transport contract (it is the reference)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest

from eventbus.errors import ConfigurationError
from eventbus.transports import MemoryTransport, transport_from_url
from eventbus.typing import Transport
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
    with pytest.raises(ConfigurationError, match="no options"):
        MemoryTransport.from_url("memory://", batch=3)
    with pytest.raises(ConfigurationError, match="memory://"):
        MemoryTransport.from_url("redis://127.0.0.1")
