"""Connection faults under the NATS transport, judged by a ledger.

A loopback proxy (``tests.proxy``) sits between one side and the server and is cut
(every connection reset) or paused (refusing connections: a server that is down) while
batches are published or consumed. The other side talks to the server directly, so what
the test reads is the truth. Ledger: confirmed (publish returned), received (distinct),
duplicates (allowed: at-least-once; counted and printed), lost (confirmed and never
received: must be 0), stuck (left unacknowledged at the broker: must be 0).

Run with ``-s`` to see the ledgers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import attrs
import pytest

from eventbus.errors import TransportError
from eventbus.transports import Message
from tests.fault.ledger import Ledger
from tests.proxy import TCPProxy, tcp_proxy
from tests.servers import fresh_name, remove_nats_streams, require_broker

nats = pytest.importorskip("nats")

from eventbus_contrib.nats import NATSTransport  # noqa: E402 - after the importorskip

pytestmark = pytest.mark.slow

ACK_WAIT = 2.0
PASSWORD = "canary-fault-pw"
TOPIC = "fault.numbered"


@pytest.fixture
def server() -> tuple[str, int]:
    url = require_broker("nats")
    port = urlsplit(url).port
    assert port is not None
    return url, port


@pytest.fixture
def proxy(server: tuple[str, int]) -> Iterator[TCPProxy]:
    with tcp_proxy(server[1]) as running:
        yield running


@pytest.fixture
def namespace(server: tuple[str, int]) -> Iterator[dict[str, str]]:
    name = fresh_name()
    names = {"stream": name.upper(), "prefix": name}
    yield names
    remove_nats_streams(server[0], [names["stream"]])


def through(proxy: TCPProxy, namespace: dict[str, str], **options: float) -> NATSTransport:
    """A transport whose connection goes through the proxy, with a password in its URL."""
    return NATSTransport.from_url(
        f"nats://eventbus:{PASSWORD}@127.0.0.1:{proxy.port}",
        ack_wait=ACK_WAIT,
        **namespace,
        **options,
    )


def direct(server: tuple[str, int], namespace: dict[str, str]) -> NATSTransport:
    return NATSTransport.from_url(server[0], ack_wait=ACK_WAIT, **namespace)


@attrs.define
class NATSLedger(Ledger[int]):
    redeliveries: list[tuple[int, str, int]] = attrs.Factory(list)
    """(number, stream entry, delivery count) of each duplicate delivery."""

    def show(self, title: str) -> None:
        print(f"\n{self.report(title)}")
        if self.redeliveries:
            print(f"  duplicates (number, entry, delivery count): {self.redeliveries[:10]}")


async def read_into(transport: NATSTransport, ledger: NATSLedger, group: str) -> None:
    async for received in transport.subscribe([TOPIC], group=group):
        number = int(received.body)
        ledger.received[number] += 1
        if ledger.received[number] > 1:
            ledger.redeliveries.append((number, received.message_id, received.delivery_count))
        await received.ack()


async def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll ``condition`` (state the test's own tasks change) until true, or fail."""
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.05)


async def stuck(server: tuple[str, int], namespace: dict[str, str], group: str) -> int:
    """Messages of the group's consumer not yet acknowledged, or not yet delivered."""
    from eventbus_contrib.nats import _durable

    client = await nats.connect(server[0])
    try:
        info = await client.jetstream().consumer_info(namespace["stream"], _durable(group, TOPIC))
        return int(info.num_ack_pending or 0) + int(info.num_pending or 0)
    finally:
        await client.close()


async def stored(server: tuple[str, int], namespace: dict[str, str]) -> int:
    """How many messages the stream holds."""
    client = await nats.connect(server[0])
    try:
        info = await client.jetstream().stream_info(namespace["stream"])
        return int(info.state.messages)
    finally:
        await client.close()


async def cut_repeatedly(proxy: TCPProxy, cuts: int, every: float, pause: float) -> None:
    """Reset every connection ``cuts`` times, then refuse connections for ``pause`` s."""
    for _ in range(cuts):
        await asyncio.sleep(every)
        proxy.cut()
    await asyncio.sleep(every)
    proxy.pause()
    await asyncio.sleep(pause)
    proxy.resume()


async def test_cutting_the_publisher_loses_no_confirmed_message(
    server: tuple[str, int], proxy: TCPProxy, namespace: dict[str, str]
) -> None:
    ledger = NATSLedger()
    group = "g-publish"
    publisher = through(proxy, namespace, publish_timeout=1.0)
    reader = direct(server, namespace)
    await publisher.connect()
    await reader.connect()
    reading = asyncio.create_task(read_into(reader, ledger, group))
    cutting = asyncio.create_task(cut_repeatedly(proxy, cuts=6, every=0.4, pause=2.0))
    try:
        number = 0
        while not cutting.done() or number < 2_000:
            batch = [
                Message(uuid.uuid4(), TOPIC, None, str(n).encode())
                for n in range(number, number + 50)
            ]
            number += 50
            while True:  # what the relay does: keep the rows, send them again
                try:
                    await publisher.publish(TOPIC, *batch)
                except TransportError:
                    ledger.failed_publishes += 1
                    await asyncio.sleep(0.1)
                else:
                    ledger.confirmed.update(int(m.body) for m in batch)
                    break
        await cutting
        await wait_for(lambda: not ledger.lost, timeout=20)
        left = await stuck(server, namespace, group)
        kept = await stored(server, namespace)
    finally:
        ledger.show("publisher cut")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await publisher.aclose()
        await reader.aclose()
    assert not ledger.lost
    assert left == 0
    assert ledger.failed_publishes > 0  # the faults did reach the publisher
    assert proxy.connections > 1  # and it reconnected by itself
    # Stored once each: a batch sent again after a lost PubAck is deduplicated by id.
    assert kept == len(ledger.confirmed)


async def test_cutting_the_consumer_loses_nothing_and_it_resumes_by_itself(
    server: tuple[str, int],
    proxy: TCPProxy,
    namespace: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.nats")
    ledger = NATSLedger()
    group = "g-consume"
    publisher = direct(server, namespace)
    consumer = through(proxy, namespace, batch=50)
    await publisher.connect()
    await consumer.connect()
    total = 3_000
    reading = asyncio.create_task(read_into(consumer, ledger, group))
    try:
        await asyncio.sleep(0.3)
        publishing = asyncio.create_task(publish_slowly(publisher, ledger, total))
        await cut_repeatedly(proxy, cuts=6, every=0.4, pause=2.0)
        await publishing
        await wait_for(lambda: len(ledger.received) >= total, timeout=30)
        # Every delivery was acked at last: nothing left pending at the broker.
        deadline = time.monotonic() + 4 * ACK_WAIT
        while True:
            left = await stuck(server, namespace, group)
            if not left or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        ledger.show("consumer cut")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await publisher.aclose()
        await consumer.aclose()
    assert not ledger.lost
    assert left == 0
    assert proxy.connections > 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reconnected" in w for w in warnings)
    assert not any(PASSWORD in w for w in warnings)


async def publish_slowly(publisher: NATSTransport, ledger: NATSLedger, total: int) -> None:
    """Publish ``total`` messages in batches spread over the faults."""
    for start in range(0, total, 100):
        batch = [
            Message(uuid.uuid4(), TOPIC, None, str(n).encode()) for n in range(start, start + 100)
        ]
        await publisher.publish(TOPIC, *batch)
        ledger.confirmed.update(int(m.body) for m in batch)
        await asyncio.sleep(0.1)


async def test_publish_during_an_outage_raises_in_bounded_time_then_works_again(
    server: tuple[str, int], proxy: TCPProxy, namespace: dict[str, str]
) -> None:
    ledger = NATSLedger()
    publisher = through(proxy, namespace, publish_timeout=1.0)
    reader = direct(server, namespace)
    await publisher.connect()
    await reader.connect()
    reading = asyncio.create_task(read_into(reader, ledger, "g-outage"))
    try:
        proxy.pause()
        during = Message(uuid.uuid4(), TOPIC, None, b"1")
        started = time.monotonic()
        with pytest.raises(TransportError):
            await publisher.publish(TOPIC, during)
        assert time.monotonic() - started < 3.0  # bounded by publish_timeout, not hung
        proxy.resume()
        async with asyncio.timeout(20):
            while True:  # the same transport, retried as the relay would
                try:
                    await publisher.publish(TOPIC, during)
                except TransportError:
                    await asyncio.sleep(0.2)
                else:
                    ledger.confirmed.add(1)
                    break
        await publisher.publish(TOPIC, Message(uuid.uuid4(), TOPIC, None, b"2"))
        ledger.confirmed.add(2)
        await wait_for(lambda: not ledger.lost, timeout=10)
        kept = await stored(server, namespace)
    finally:
        ledger.show("outage")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await publisher.aclose()
        await reader.aclose()
    assert not ledger.lost
    # The publish that raised may have reached the server after the reconnect (nats-py
    # buffers it); its retry carried the same id, so the stream holds it once.
    assert kept == 2


async def test_a_consumer_whose_connection_dies_hands_its_messages_to_the_group(
    server: tuple[str, int], proxy: TCPProxy, namespace: dict[str, str]
) -> None:
    """No nak reaches the broker from a dead consumer: its messages come back to another
    consumer of the group after ack_wait, counted."""
    doomed = through(proxy, namespace)
    survivor = direct(server, namespace)
    await doomed.connect()
    await survivor.connect()
    group = "g-dies"
    try:
        held = doomed.subscribe([TOPIC], group=group)
        await survivor.publish(
            TOPIC, *(Message(uuid.uuid4(), TOPIC, None, b"%d" % n) for n in range(3))
        )
        async with asyncio.timeout(10):
            first = [await held.__anext__() for _ in range(3)]
        assert [r.delivery_count for r in first] == [1, 1, 1]
        proxy.pause()  # the consumer's connection is gone: no ack, no nak, no reconnect
        started = time.monotonic()
        taken = survivor.subscribe([TOPIC], group=group)
        try:
            async with asyncio.timeout(4 * ACK_WAIT):
                again = [await taken.__anext__() for _ in range(3)]
            for received in again:
                await received.ack()
        finally:
            await taken.aclose()  # type: ignore[attr-defined]
        assert time.monotonic() - started >= ACK_WAIT * 0.5  # after ack_wait, not at once
        assert sorted(r.body for r in again) == [b"0", b"1", b"2"]
        assert [r.delivery_count for r in again] == [2, 2, 2]
    finally:
        proxy.resume()
        await held.aclose()  # type: ignore[attr-defined]
        await doomed.aclose()
        await survivor.aclose()
