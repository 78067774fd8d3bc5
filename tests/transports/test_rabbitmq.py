"""The RabbitMQ transport passes the transport contract, on classic and on quorum queues;
plus what is RabbitMQ's own: returns, persistence, options, a cut in the middle of a batch.

Each test gets its own exchange (a fresh name of this run's, see tests/servers.py), so its
queues and bindings never meet another test's; its exchange and queues are deleted when it
ends, also when it fails (durable quorum queues left behind would each keep a Raft member
alive on the shared broker).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("aio_pika")

from eventbus_contrib.rabbitmq import (
    MessageTooLargeError,
    RabbitMQQuorumTransport,
    RabbitMQTransport,
)

from eventbus import EventBus, EventRegistry, SQLiteOutbox, event
from eventbus.errors import ConfigurationError, MessageRejectedError, TransportError
from eventbus.transports import transport_from_url
from eventbus.typing import Transport
from tests.proxy import tcp_proxy
from tests.servers import fresh_name, remove_rabbitmq, require_broker
from tests.transports.contract import WAIT, Consumer, TransportContract, message


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class TestRabbitMQTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = RabbitMQTransport
    quorum: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def _exchange(self) -> Iterator[None]:
        self.url = require_broker("rabbitmq")
        self.exchange = fresh_name()
        self.queues: list[str] = []  # a test that names its queues otherwise adds them
        yield
        # The groups the contract makes: its own, a second one, one made late.
        groups = (self.group, f"{self.group}-2", f"{self.group}-late")
        queues = [f"{self.exchange}.{g}" for g in groups] + self.queues
        queues += [f"{queue}.dead-letter" for queue in queues]
        remove_rabbitmq(self.url, exchanges=[self.exchange], queues=queues)

    async def make(self, **options: Any) -> Transport:
        options.setdefault("exchange", self.exchange)
        options.setdefault("quorum", self.quorum)
        # The contract takes a 300-message batch before acking any: above the default 100.
        options.setdefault("prefetch", 500)
        transport = RabbitMQTransport.from_url(self.url, **options)
        await transport.connect()
        return transport

    def secret_url(self, password: str, *, port: int | None) -> str | None:
        return f"amqp://guest:{password}@127.0.0.1:{port or 5672}/"

    # -- RabbitMQ's own ------------------------------------------------------------------

    async def test_the_url_resolves_to_this_class_and_quorum_to_its_subclass(self) -> None:
        assert type(transport_from_url(self.url)) is RabbitMQTransport
        quorum = transport_from_url(self.url, quorum=True)
        assert type(quorum) is RabbitMQQuorumTransport
        assert quorum.capabilities.counts_deliveries
        assert not RabbitMQTransport.capabilities.counts_deliveries

    async def test_an_unroutable_message_raises_and_is_not_confirmed(self) -> None:
        async with self.transport() as transport:
            with pytest.raises(TransportError, match="unroutable") as caught:
                await transport.publish(self.topic, message(self.topic, b"nobody"))
            assert not isinstance(caught.value, MessageRejectedError)  # retryable
            # The same transport goes on: once a group is bound, the retry is confirmed.
            async with self.consumer(transport) as consumer:
                await asyncio.sleep(0.3)
                await transport.publish(self.topic, message(self.topic, b"now"))
                (received,) = await consumer.take()
                assert received.body == b"now"
                await received.ack()

    async def test_messages_are_persistent_and_carry_their_id_and_key(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                sent = message(self.topic, b"durable", key="order-7")
                await transport.publish(self.topic, sent)
                (received,) = await consumer.take()
                incoming = received._incoming  # type: ignore[attr-defined]
                assert incoming.delivery_mode == 2  # aio-pika's default is 1: not persistent
                assert incoming.message_id == str(sent.id)
                assert incoming.headers["eventbus-key"] == "order-7"
                await received.ack()
            finally:
                await consumer.close()

    async def test_the_group_queue_is_durable_and_named_from_the_prefix(self) -> None:
        import aio_pika

        prefix = fresh_name()
        self.queues.append(f"{prefix}.{self.group}")
        async with self.transport(queue_prefix=prefix) as transport:
            consumer = await self.subscribed(transport)
            await consumer.close()
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            # passive: fails unless it exists; the durable flag must match to redeclare it.
            queue = await channel.declare_queue(f"{prefix}.{self.group}", passive=True)
            assert queue.declaration_result.message_count == 0
            await channel.declare_queue(
                f"{prefix}.{self.group}",
                durable=True,
                arguments={"x-queue-type": "quorum"} if self.quorum else None,
            )
        finally:
            await connection.close()

    async def test_bindings_grow_as_new_topics_are_subscribed(self) -> None:
        async with self.transport() as transport:
            first = await self.subscribed(transport)
            await first.close()
            second = await self.subscribed(transport, topics=[self.topic, self.other])
            try:
                await transport.publish(self.topic, message(self.topic, b"a"))
                await transport.publish(self.other, message(self.other, b"b"))
                got = await second.take(2)
                assert sorted(r.body for r in got) == [b"a", b"b"]
                for received in got:
                    await received.ack()
            finally:
                await second.close()

    async def test_a_consumer_hands_back_a_topic_it_did_not_ask_for(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with self.transport() as transport:
            wide = await self.subscribed(transport, topics=[self.topic, self.other])
            await wide.close()  # the group's queue is now bound to both topics
            narrow = Consumer(transport, [self.topic], self.group)
            await asyncio.sleep(0.3)
            try:
                with caplog.at_level(logging.WARNING, logger="eventbus.rabbitmq"):
                    await transport.publish(self.other, message(self.other, b"not mine"))
                    await narrow.nothing(timeout=1.0)
                assert "should subscribe the same topics" in caplog.text
            finally:
                await narrow.close()
            async with self.consumer(transport, topics=[self.other]) as other:
                (received,) = await other.take()
                assert received.body == b"not mine"
                await received.ack()

    async def test_a_batch_confirms_or_raises_when_the_connection_is_cut(self) -> None:
        port = urlsplit(self.url).port or 5672
        with tcp_proxy(port) as proxy:
            transport = RabbitMQTransport.from_url(
                _with_port(self.url, proxy.port), exchange=self.exchange, quorum=self.quorum
            )
            await transport.connect()
            direct = await self.make()
            consumer = await self.subscribed(direct)
            try:
                batch = [message(self.topic, f"m{i}".encode()) for i in range(2000)]
                publishing = asyncio.create_task(transport.publish(self.topic, *batch))
                await asyncio.sleep(0.01)
                proxy.cut()
                async with asyncio.timeout(WAIT):  # raises or returns: never hangs
                    outcome = await asyncio.gather(publishing, return_exceptions=True)
                if isinstance(outcome[0], BaseException):
                    assert isinstance(outcome[0], TransportError), outcome[0]
                # And the same transport publishes again once it has reconnected.
                async with asyncio.timeout(WAIT):
                    while True:
                        try:
                            await transport.publish(self.topic, message(self.topic, b"after"))
                            break
                        except TransportError:
                            await asyncio.sleep(0.2)
                async with asyncio.timeout(WAIT):
                    while (received := (await consumer.take())[0]).body != b"after":
                        await received.ack()
                await received.ack()
            finally:
                await consumer.close()
                await direct.aclose()
                await transport.aclose()

    async def test_publish_during_an_outage_raises_at_once(self) -> None:
        port = urlsplit(self.url).port or 5672
        with tcp_proxy(port) as proxy:
            transport = RabbitMQTransport.from_url(
                _with_port(self.url, proxy.port), exchange=self.exchange
            )
            await transport.connect()
            try:
                proxy.pause()
                await asyncio.sleep(0.2)
                async with asyncio.timeout(2.0):
                    with pytest.raises(TransportError, match=r"try again|did not confirm"):
                        await transport.publish(self.topic, message(self.topic, b"x"))
            finally:
                proxy.resume()
                await transport.aclose()

    async def test_single_active_consumer_gives_a_group_one_consumer_at_a_time(self) -> None:
        async with self.transport(single_active_consumer=True) as transport:
            first = await self.subscribed(transport)
            second = Consumer(transport, [self.topic], self.group)
            await asyncio.sleep(0.3)
            try:
                bodies = [f"m{i}".encode() for i in range(20)]
                await transport.publish(
                    self.topic,
                    *(message(self.topic, b, key=f"k{i % 3}") for i, b in enumerate(bodies)),
                )
                got = await first.take(20)
                assert [r.body for r in got] == bodies  # all of them, in order, to one consumer
                await second.nothing()
                await got[0].ack()
                await first.close()  # the standby takes over, with what was not acked
                again = await second.take(19)
                assert [r.body for r in again] == bodies[1:]
                for received in again:
                    await received.ack()
            finally:
                await first.close()
                await second.close()

    def test_the_url_query_carries_the_transports_own_options(self) -> None:
        transport = RabbitMQTransport.from_url(
            self.url + "?exchange=shop&heartbeat=30&quorum=true", prefetch=7
        )
        assert type(transport).__name__ == "RabbitMQQuorumTransport"
        assert transport.exchange == "shop"
        assert "exchange" not in repr(transport).split(" exchange=")[0]

    def test_from_url_refuses_bad_options_with_the_fix(self) -> None:
        with pytest.raises(
            ConfigurationError, match=r"no option 'prefetch_count' \(did you mean 'prefetch'\?\)"
        ):
            RabbitMQTransport.from_url(self.url, prefetch_count=5)
        with pytest.raises(ConfigurationError, match="prefetch must be a positive"):
            RabbitMQTransport.from_url(self.url, prefetch=0)
        with pytest.raises(ConfigurationError, match="quorum=True"):
            RabbitMQTransport.from_url(self.url, delivery_limit=5)
        with pytest.raises(ConfigurationError, match="unknown option 'fail_fast'"):
            RabbitMQTransport.from_url(self.url + "?fail_fast=1")
        with pytest.raises(ConfigurationError, match=r"prefetch=.* must be a whole number"):
            RabbitMQTransport.from_url(self.url + "?prefetch=many")
        with pytest.raises(ConfigurationError, match="exchange name"):
            RabbitMQTransport.from_url(self.url, exchange="bad name")
        with pytest.raises(ConfigurationError, match="amqp://"):
            RabbitMQTransport.from_url("redis://127.0.0.1:6379")

    async def test_a_bad_group_or_topic_is_a_configuration_error(self) -> None:
        async with self.transport() as transport:
            iterator = transport.subscribe([self.topic], group="a group")
            with pytest.raises(ConfigurationError, match="consumer group"):
                await iterator.__anext__()
            iterator = transport.subscribe(["orders.*"], group=self.group)
            with pytest.raises(ConfigurationError, match="topic"):
                await iterator.__anext__()

    async def test_redeclaring_a_group_with_other_arguments_says_how_to_fix_it(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            await consumer.close()
        async with self.transport(quorum=not self.quorum) as other:
            iterator = other.subscribe([self.topic], group=self.group)
            with pytest.raises(ConfigurationError, match="queue_prefix"):
                await iterator.__anext__()


class TestRabbitMQQuorumTransport(TestRabbitMQTransport):
    """The whole contract again on quorum queues, which count deliveries."""

    transport_class: ClassVar[type[Transport]] = RabbitMQQuorumTransport
    quorum: ClassVar[bool] = True

    async def test_past_the_delivery_limit_the_broker_moves_a_message_aside(self) -> None:
        import aio_pika

        async with self.transport(delivery_limit=2) as transport:
            consumer = await self.subscribed(transport)
            try:
                await transport.publish(self.topic, message(self.topic, b"poison"))
                counts: list[int] = []
                while True:
                    try:
                        (received,) = await consumer.take(timeout=1.5)
                    except pytest.fail.Exception:
                        break
                    counts.append(received.delivery_count)
                    await received.nack()
                assert counts == [1, 2, 3]  # the limit counts redeliveries: 2 + the first
            finally:
                await consumer.close()
        connection = await aio_pika.connect(self.url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                f"{self.exchange}.{self.group}.dead-letter", passive=True
            )
            got = None
            for _ in range(int(WAIT / 0.1)):  # dead-lettering is asynchronous: poll for it
                if (got := await queue.get(fail=False)) is not None:
                    break
                await asyncio.sleep(0.1)
            assert got is not None
            assert got.body == b"poison"
            await got.ack()
        finally:
            await connection.close()


async def test_a_message_over_the_broker_size_limit_is_rejected_and_the_rest_published() -> None:
    """RabbitMQ's default max_message_size is 128 MiB: one byte more is refused for good.
    The broker closes the channel on it, failing the whole batch in flight: the transport
    publishes the rest again and names only the oversized one; the next batch is split
    before it is sent, and the same transport goes on."""
    url = require_broker("rabbitmq")
    topic = f"t{uuid.uuid4().hex[:10]}.placed"
    exchange = fresh_name()
    transport = RabbitMQTransport.from_url(url, exchange=exchange)
    consumer = Consumer(transport, [topic], "g")
    big = b"x" * (128 * 1024 * 1024 + 1)
    try:
        await asyncio.sleep(0.3)
        for round_ in range(2):  # the first learns the limit from the broker, the second knows it
            batch = [message(topic, f"a{round_}".encode()), message(topic, big)]
            batch.append(message(topic, f"b{round_}".encode()))
            with pytest.raises(MessageTooLargeError, match="max_message_size") as caught:
                await transport.publish(topic, *batch)
            assert caught.value.rejected == (batch[1].id,)
            assert isinstance(caught.value, MessageRejectedError)  # dead-lettered, not retried
            wanted = {f"a{round_}".encode(), f"b{round_}".encode()}
            seen: list[bytes] = []
            while not wanted <= set(seen):
                (received,) = await consumer.take()
                seen.append(received.body)
                await received.ack()
            assert set(seen) == wanted  # a0 may come twice: stored before the refusal
        await transport.publish(topic, message(topic, b"small"))
        (received,) = await consumer.take()
        assert received.body == b"small"
        await received.ack()
    finally:
        await consumer.close()
        await transport.aclose()
        remove_rabbitmq(url, exchanges=[exchange], queues=[f"{exchange}.g"])


# -- a bus's own worker and relay on a fresh broker ----------------------------------------

FRESH = EventRegistry()


@event("rabbit.fresh_group_order", registry=FRESH)
class FreshOrder:
    order_id: str


@pytest.fixture
def fresh_namespace() -> Iterator[tuple[str, str, str]]:
    """A RabbitMQ URL with an exchange nobody declared yet, and a group of this test:
    (url, exchange, group); the queue and the exchange are deleted afterwards."""
    url = require_broker("rabbitmq")
    exchange = fresh_name()
    group = f"g{uuid.uuid4().hex[:8]}"
    yield f"{url}?exchange={exchange}", exchange, group
    remove_rabbitmq(url, exchanges=[exchange], queues=[f"{exchange}.{group}"])


def test_the_worker_declares_its_queue_before_its_own_relay_publishes(
    fresh_namespace: tuple[str, str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fresh start with rows waiting in the outbox: the relay's first publish used to
    reach the exchange before the worker had declared its queue, so the broker returned
    it ("returned unroutable ... start a worker for it") and it waited for a retry."""
    url, _exchange, group = fresh_namespace
    outbox = SQLiteOutbox(tmp_path / "outbox.sqlite3", poll_interval=0.05)
    bus = EventBus(registry=FRESH, outbox=outbox, transport_url=url, group=group)
    handled: list[str] = []

    @bus.subscribe(delivery="durable", name="orders.ship")
    def ship(order: FreshOrder) -> None:
        handled.append(order.order_id)

    caplog.set_level(logging.WARNING, logger="eventbus")
    connection = sqlite3.connect(tmp_path / "outbox.sqlite3", isolation_level=None)
    try:
        # The commit starts the bus: its worker and its relay, at once.
        with bus.transaction(connection):
            for number in range(5):
                bus.publish(FreshOrder(order_id=f"o-{number}"))
        deadline = time.monotonic() + 30
        while len(handled) < 5:
            assert time.monotonic() < deadline, (handled, caplog.text)
            time.sleep(0.05)
    finally:
        connection.close()
        bus.close()
        outbox.close()
    assert sorted(handled) == [f"o-{number}" for number in range(5)]
    assert "unroutable" not in caplog.text
    assert "did not confirm" not in caplog.text
