"""The RabbitMQ transport under connection cuts, judged by a ledger.

A loopback proxy (``tests.proxy``) sits between one side and the broker and drops every
connection now and then, as a broker that goes away would. The ledger: messages
confirmed (``publish`` returned), received (distinct), duplicates (allowed: at-least-once,
counted and printed) and lost (confirmed but never received: must be 0). A publish that
raised is retried by the test with the same messages, as the relay does. Run with ``-s``
to see the ledgers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

pytest.importorskip("aio_pika")

from eventbus_contrib.rabbitmq import RabbitMQTransport

from eventbus.errors import TransportError
from eventbus.transports import Message
from tests.fault.ledger import Ledger
from tests.proxy import TCPProxy, tcp_proxy
from tests.servers import fresh_name, remove_rabbitmq, require_broker

pytestmark = pytest.mark.slow

BATCH = 100
BATCHES = 40
CUTS = 8
CUT_EVERY = 0.25
DEADLINE = 45.0


def _through(url: str, proxy: TCPProxy) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@127.0.0.1:{proxy.port}"))


def _batches(topic: str) -> list[list[Message]]:
    return [
        [Message(uuid.uuid4(), topic, f"k{i % 10}", f"{b}-{i}".encode()) for i in range(BATCH)]
        for b in range(BATCHES)
    ]


async def _publish_all(transport: RabbitMQTransport, topic: str, ledger: Ledger[bytes]) -> None:
    """Publish every batch until it is confirmed, retrying the ones that raised."""
    for batch in _batches(topic):
        while True:
            try:
                await transport.publish(topic, *batch)
            except TransportError:
                ledger.failed_publishes += 1
                await asyncio.sleep(0.05)
                continue
            ledger.confirmed.update(m.body for m in batch)
            break


async def _consume(
    transport: RabbitMQTransport, topic: str, group: str, ledger: Ledger[bytes]
) -> None:
    async for received in transport.subscribe([topic], group=group):
        ledger.received[received.body] += 1
        with contextlib.suppress(TransportError):  # its channel died: it comes again
            await received.ack()


@contextlib.asynccontextmanager
async def _consuming(
    consumer: RabbitMQTransport, topic: str, group: str, ledger: Ledger[bytes]
) -> AsyncIterator[asyncio.Task[None]]:
    """``consumer`` takes ``topic`` into the ledger while the block runs; then it stops
    and is closed."""
    consuming = asyncio.create_task(_consume(consumer, topic, group, ledger))
    try:
        yield consuming
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await consumer.aclose()


async def _publish_confirmed(
    publisher: RabbitMQTransport, topic: str, ledger: Ledger[bytes], tag: str, count: int
) -> None:
    """Publish ``count`` messages in one batch; once it returns, they are confirmed."""
    messages = [Message(uuid.uuid4(), topic, None, f"{tag}{i}".encode()) for i in range(count)]
    await publisher.publish(topic, *messages)
    ledger.confirmed.update(m.body for m in messages)


async def _cutter(proxy: TCPProxy) -> None:
    for _ in range(CUTS):
        await asyncio.sleep(CUT_EVERY)
        proxy.cut()


async def _until_all_received(ledger: Ledger[bytes], consuming: asyncio.Task[None]) -> None:
    async with asyncio.timeout(DEADLINE):
        while ledger.lost or not ledger.confirmed:
            if consuming.done():
                consuming.result()
                pytest.fail("the subscription ended")
            await asyncio.sleep(0.1)


async def _subscribed(transport: RabbitMQTransport, topic: str, group: str) -> None:
    """Make sure the group's queue exists (so nothing is unroutable), then let go."""
    iterator = transport.subscribe([topic], group=group)
    waiting = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0.5)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await waiting
    await iterator.aclose()  # type: ignore[attr-defined]


@pytest.fixture
def names() -> Iterator[tuple[str, str, str]]:
    """An exchange, a topic and a group of the test's own, deleted from the broker after."""
    tag = uuid.uuid4().hex[:10]
    exchange, group = fresh_name(), f"g{tag}"
    yield exchange, f"t{tag}.placed", group
    url = require_broker("rabbitmq")
    remove_rabbitmq(url, exchanges=[exchange], queues=[f"{exchange}.{group}"])


async def test_cuts_while_publishing_batches_lose_nothing(names: tuple[str, str, str]) -> None:
    url = require_broker("rabbitmq")
    exchange, topic, group = names
    ledger: Ledger[bytes] = Ledger()
    consumer = RabbitMQTransport.from_url(url, exchange=exchange)
    await consumer.connect()
    await _subscribed(consumer, topic, group)
    port = urlsplit(url).port or 5672
    async with _consuming(consumer, topic, group, ledger) as consuming:
        with tcp_proxy(port) as proxy:
            publisher = RabbitMQTransport.from_url(
                _through(url, proxy), exchange=exchange, reconnect_interval=0.2
            )
            await publisher.connect()
            try:
                cutting = asyncio.create_task(_cutter(proxy))
                async with asyncio.timeout(DEADLINE):
                    await _publish_all(publisher, topic, ledger)
                await cutting
                await _until_all_received(ledger, consuming)
            finally:
                await publisher.aclose()
    print(ledger.report("cuts while publishing"), f"({proxy.connections} connections)")
    assert len(ledger.confirmed) == BATCH * BATCHES
    assert not ledger.lost
    assert proxy.connections > 1, "the cuts never reached the publisher"


async def test_cuts_while_consuming_lose_nothing_and_it_resumes_by_itself(
    names: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url = require_broker("rabbitmq")
    exchange, topic, group = names
    ledger: Ledger[bytes] = Ledger()
    port = urlsplit(url).port or 5672
    with tcp_proxy(port) as proxy, caplog.at_level(logging.WARNING):
        consumer = RabbitMQTransport.from_url(
            _through(url, proxy), exchange=exchange, prefetch=50, reconnect_interval=0.2
        )
        publisher = RabbitMQTransport.from_url(url, exchange=exchange)
        await publisher.connect()
        await _subscribed(publisher, topic, group)
        try:
            async with _consuming(consumer, topic, group, ledger) as consuming:
                cutting = asyncio.create_task(_cutter(proxy))
                async with asyncio.timeout(DEADLINE):
                    await _publish_all(publisher, topic, ledger)
                await cutting
                await _until_all_received(ledger, consuming)
                # After the last cut, the same subscription still takes new messages.
                await _publish_confirmed(publisher, topic, ledger, "late", 1)
                await _until_all_received(ledger, consuming)
        finally:
            await publisher.aclose()
    print(ledger.report("cuts while consuming"), f"({proxy.connections} connections)")
    assert not ledger.lost
    assert proxy.connections > 1, "the cuts never reached the consumer"
    ours = [r.getMessage() for r in caplog.records if r.name == "eventbus.rabbitmq"]
    assert any("lost its channel" in m for m in ours), "a lost connection is logged"
    assert ":guest@" not in caplog.text  # the password never reaches a log, ours or aio-pika's


async def test_a_broker_that_is_down_for_seconds_is_waited_for(
    names: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The server goes away (connections refused), messages keep coming in meanwhile,
    and the subscription takes them all once it is back, by itself."""
    url = require_broker("rabbitmq")
    exchange, topic, group = names
    ledger: Ledger[bytes] = Ledger()
    port = urlsplit(url).port or 5672
    with tcp_proxy(port) as proxy, caplog.at_level(logging.WARNING):
        consumer = RabbitMQTransport.from_url(
            _through(url, proxy), exchange=exchange, reconnect_interval=0.2
        )
        publisher = RabbitMQTransport.from_url(url, exchange=exchange)
        await publisher.connect()
        await _subscribed(publisher, topic, group)
        try:
            async with _consuming(consumer, topic, group, ledger) as consuming:
                try:
                    await _publish_confirmed(publisher, topic, ledger, "a", 500)
                    await asyncio.sleep(0.05)
                    proxy.pause()
                    await _publish_confirmed(publisher, topic, ledger, "b", 500)
                    await asyncio.sleep(2.0)
                    assert ledger.lost, "the consumer was cut off: not all can have arrived"
                    proxy.resume()
                    await _until_all_received(ledger, consuming)
                finally:
                    proxy.resume()  # before the consumer closes through it
        finally:
            await publisher.aclose()
    print(ledger.report("broker down for 2 s"), f"({proxy.connections} connections)")
    assert not ledger.lost
    assert ":guest@" not in caplog.text


async def test_a_subscription_started_while_the_broker_is_down_starts_when_it_is_back(
    names: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url = require_broker("rabbitmq")
    exchange, topic, group = names
    ledger: Ledger[bytes] = Ledger()
    port = urlsplit(url).port or 5672
    with tcp_proxy(port) as proxy, caplog.at_level(logging.WARNING):
        proxy.pause()
        consumer = RabbitMQTransport.from_url(_through(url, proxy), exchange=exchange)
        publisher = RabbitMQTransport.from_url(url, exchange=exchange)
        await publisher.connect()
        await _subscribed(publisher, topic, group)
        try:
            async with _consuming(consumer, topic, group, ledger) as consuming:
                try:
                    await _publish_confirmed(publisher, topic, ledger, "m", 100)
                    await asyncio.sleep(1.5)
                    assert not ledger.received
                    proxy.resume()
                    await _until_all_received(ledger, consuming)
                finally:
                    proxy.resume()  # before the consumer closes through it
        finally:
            await publisher.aclose()
    assert not ledger.lost
    assert "cannot start" in caplog.text  # the retries are logged, without the password
    assert ":guest@" not in caplog.text


class FreezingProxy(TCPProxy):
    """A proxy that can stop forwarding without closing anything: a silent peer (a
    half-dead NAT entry, a frozen broker), which only heartbeats notice."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.thawed = threading.Event()  # set from the test's thread, read on the proxy's
        self.thawed.set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                if not self.thawed.is_set():  # hold the bytes, as a silent network does
                    await asyncio.to_thread(self.thawed.wait)
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def test_a_silent_peer_is_noticed_by_heartbeats_and_publish_does_not_hang(
    names: tuple[str, str, str],
) -> None:
    url = require_broker("rabbitmq")
    exchange, topic, group = names
    ledger: Ledger[bytes] = Ledger()
    proxy = FreezingProxy(urlsplit(url).port or 5672)
    proxy.start()
    try:
        consumer = RabbitMQTransport.from_url(
            _through(url, proxy), exchange=exchange, heartbeat=1, reconnect_interval=0.2
        )
        silent = RabbitMQTransport.from_url(
            _through(url, proxy), exchange=exchange, heartbeat=1, confirm_timeout=2.0
        )
        publisher = RabbitMQTransport.from_url(url, exchange=exchange)
        await publisher.connect()
        await silent.connect()
        await _subscribed(publisher, topic, group)
        try:
            async with _consuming(consumer, topic, group, ledger) as consuming:
                try:
                    await _publish_confirmed(publisher, topic, ledger, "a", 100)
                    await _until_all_received(ledger, consuming)
                    proxy.thawed.clear()
                    void = Message(uuid.uuid4(), topic, None, b"void")
                    async with asyncio.timeout(5.0):  # raises by confirm_timeout, never hangs
                        with pytest.raises(TransportError):
                            await silent.publish(topic, void)
                    await _publish_confirmed(publisher, topic, ledger, "b", 100)
                    await asyncio.sleep(6.0)  # > 3 heartbeats: the consumer gave it up
                    proxy.thawed.set()
                    await _until_all_received(ledger, consuming)
                finally:
                    proxy.thawed.set()  # before the consumer closes through it
        finally:
            await silent.aclose()
            await publisher.aclose()
    finally:
        proxy.stop()
    print(ledger.report("silent peer for 6 s"), f"({proxy.connections} connections)")
    assert not ledger.lost
    assert proxy.connections > 2, "the consumer never reconnected: heartbeats did not fire"
