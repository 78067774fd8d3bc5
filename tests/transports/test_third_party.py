"""A transport a third party would write, on the public surface alone, passes the
transport contract and durable delivery through a bus, over a third party's outbox store
(both in tests/third_party.py)."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest

from eventbus import EventBus
from eventbus.errors import ConfigurationError
from eventbus.typing import OutboxStore, SupportsPending, Transport
from tests.third_party import ThirdPartyOutbox, ThirdPartyTransport
from tests.transports.bus_contract import REGISTRY, BusOverTransport
from tests.transports.contract import TransportContract


class TestThirdPartyTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = ThirdPartyTransport

    async def make(self, **options: Any) -> Transport:
        transport = ThirdPartyTransport.from_url(f"thirdparty://{uuid.uuid4().hex}", **options)
        await transport.connect()
        return transport


class TestBusOverThirdParty(BusOverTransport):
    transport_class: ClassVar[type[Transport]] = ThirdPartyTransport

    async def make_transport(self) -> Transport:
        return ThirdPartyTransport(self.namespace)

    def make_outbox(self) -> OutboxStore:
        return ThirdPartyOutbox(self.database, poll_interval=0.05)


def test_its_optional_abilities_are_found_by_what_they_are() -> None:
    """The bus finds ``pending`` (drain waits for the group) by isinstance, not by name."""
    assert isinstance(ThirdPartyTransport(), SupportsPending)
    assert isinstance(ThirdPartyTransport(), Transport)


def test_a_bus_takes_it_from_code_and_refuses_a_url_of_another_scheme(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match="thirdparty://"):
        ThirdPartyTransport.from_url("memory://x")
    outbox = ThirdPartyOutbox(tmp_path / "app.db")
    bus = EventBus(registry=REGISTRY, outbox=outbox, transport=ThirdPartyTransport())
    try:
        assert isinstance(bus.transport, ThirdPartyTransport)
        assert bus.outbox is outbox
    finally:
        bus.close()
        outbox.close()
