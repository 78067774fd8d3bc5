"""Durable delivery through each broker: the bus contract of ``bus_contract.py``.

The same tests as ``TestBusOverMemory``: only the transport differs, made from the URL of
a reachable broker with a namespace of the test's own, removed from the broker when the
test ends (skipped when the broker is not there; failed under CI=true). Redelivery
timeouts are short so a dead consumer's message comes back within the test. Transport
classes are resolved when a test runs, so a missing extra fails those tests, not the
collection of every other.
"""

from __future__ import annotations

from eventbus.transports import Capabilities, transport_class, transport_from_url
from eventbus.typing import Transport
from tests.transports.bus_contract import BusOverTransport


class TestBusOverRedis(BusOverTransport):
    broker = "redis"

    def capabilities(self) -> Capabilities:
        return transport_class("redis").capabilities

    async def make_transport(self) -> Transport:
        return transport_from_url(self.space.url, claim_idle=1.0, block=0.2)


class TestBusOverRabbitMQ(BusOverTransport):
    broker = "rabbitmq"

    def capabilities(self) -> Capabilities:
        return transport_class("amqp").capabilities

    async def make_transport(self) -> Transport:
        return transport_from_url(self.space.url)


class TestBusOverRabbitMQQuorum(BusOverTransport):
    """Quorum queues count deliveries, so the delivery limit is tested here too."""

    broker = "rabbitmq"

    def capabilities(self) -> Capabilities:
        from eventbus_contrib.rabbitmq import RabbitMQQuorumTransport

        return RabbitMQQuorumTransport.capabilities

    async def make_transport(self) -> Transport:
        return transport_from_url(self.space.url, quorum=True)


class TestBusOverNATS(BusOverTransport):
    broker = "nats"

    def capabilities(self) -> Capabilities:
        return transport_class("nats").capabilities

    async def make_transport(self) -> Transport:
        return transport_from_url(self.space.url, ack_wait=1.0)


class TestBusOverKafka(BusOverTransport):
    broker = "kafka"

    def capabilities(self) -> Capabilities:
        return transport_class("kafka").capabilities

    async def make_transport(self) -> Transport:
        return transport_from_url(self.space.url)
