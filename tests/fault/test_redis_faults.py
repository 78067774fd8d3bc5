"""Faults of the Redis Streams transport, judged by a ledger: nothing confirmed is lost.

A publisher sends numbered batches and retries a batch whose publish raised (as the relay
does: same messages, so a retry after a lost reply stores duplicates); a consumer reads
and acks. Meanwhile the connection is cut (``tcp_proxy``), Redis is away for a while
(the proxy refuses connections), or a ``redis-server`` of the test's own is SIGKILLed
and started again on the same port (with ``appendfsync always``, so what it confirmed is
on disk). The ledger: confirmed, received (distinct), duplicates (allowed, printed),
lost (must be 0). The transports are never rebuilt: they must resume by themselves.
Run with ``-s`` to see the ledgers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest

from eventbus.errors import TransportError
from eventbus.typing import Received
from tests.fault.ledger import Ledger
from tests.proxy import tcp_proxy
from tests.servers import fresh_name, require_broker, unavailable
from tests.transports.contract import message

redis = pytest.importorskip("redis")
from eventbus_contrib.redis import RedisStreamsTransport  # noqa: E402

pytestmark = pytest.mark.slow

BATCHES = 60
PER_BATCH = 20
SETTLE = 30.0
"""Seconds the consumer has, after the last confirmed publish, to have received it all."""


@attrs.define
class RedisLedger(Ledger[bytes]):
    failed_acks: int = 0
    stuck: int = -1
    """Entries still pending in the group at the end (never acked, never redelivered)."""

    def report(self, title: str, **more: object) -> str:
        return super().report(
            title, acks_that_raised=self.failed_acks, stuck_pending=self.stuck, **more
        )


async def publish_all(transport: RedisStreamsTransport, topic: str, ledger: RedisLedger) -> None:
    for batch in range(BATCHES):
        bodies = [f"{batch}:{i}".encode() for i in range(PER_BATCH)]
        messages = [message(topic, body, key=f"k{i % 3}") for i, body in enumerate(bodies)]
        async with asyncio.timeout(60):
            while True:
                try:
                    await transport.publish(topic, *messages)
                except TransportError:
                    ledger.failed_publishes += 1
                    await asyncio.sleep(0.05)
                    continue
                ledger.confirmed.update(bodies)
                break
        await asyncio.sleep(0.03)  # spread over the faults


async def consume(
    transport: RedisStreamsTransport, topic: str, group: str, ledger: RedisLedger
) -> None:
    async for received in transport.subscribe([topic], group=group):
        ledger.received[received.body] += 1
        try:
            await received.ack()
        except TransportError:
            ledger.failed_acks += 1  # it stays pending: delivered again, a duplicate


async def run_with_faults(
    publisher: RedisStreamsTransport,
    consumer: RedisStreamsTransport,
    faults: Callable[[], Awaitable[None]],
    name: str,
    server_port: int,
) -> RedisLedger:
    topic = f"t{uuid.uuid4().hex[:10]}.fault"
    group = f"g{uuid.uuid4().hex[:10]}"
    ledger = RedisLedger()
    reader = asyncio.create_task(consume(consumer, topic, group, ledger))
    try:
        await asyncio.sleep(0.3)
        await asyncio.gather(publish_all(publisher, topic, ledger), faults())
        deadline = time.monotonic() + SETTLE
        while ledger.lost and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        client = redis.asyncio.Redis(port=server_port)
        try:
            stream = publisher.prefix + topic
            while time.monotonic() < deadline:
                ledger.stuck = (await client.xpending(stream, group))["pending"]
                if not ledger.stuck:
                    break
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()
        assert not reader.done(), "the subscription ended"
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        client = redis.asyncio.Redis(port=server_port)
        try:  # the shared server keeps nothing of this test
            await client.delete(publisher.prefix + topic)
        finally:
            await client.aclose()
    print(ledger.report(name))
    assert len(ledger.confirmed) == BATCHES * PER_BATCH
    assert not ledger.lost, sorted(ledger.lost)[:20]
    assert ledger.stuck == 0
    return ledger


def _options(prefix: str) -> dict[str, object]:
    return {"prefix": prefix, "block": 0.1, "claim_idle": 2.0}


async def test_cutting_connections_while_publishing_and_consuming_loses_nothing() -> None:
    port = urlsplit(require_broker("redis")).port or 6379
    prefix = f"{fresh_name()}:"
    with tcp_proxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        publisher = RedisStreamsTransport.from_url(url, **_options(prefix))
        consumer = RedisStreamsTransport.from_url(url, **_options(prefix))

        async def cuts() -> None:
            for _ in range(8):
                await asyncio.sleep(0.25)
                proxy.cut()

        try:
            await run_with_faults(publisher, consumer, cuts, "cut 8 times", port)
            assert proxy.connections > 2  # both reconnected by themselves
        finally:
            await publisher.aclose()
            await consumer.aclose()


async def test_redis_away_for_a_while_loses_nothing() -> None:
    port = urlsplit(require_broker("redis")).port or 6379
    prefix = f"{fresh_name()}:"
    with tcp_proxy(port) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0"
        publisher = RedisStreamsTransport.from_url(url, **_options(prefix))
        consumer = RedisStreamsTransport.from_url(url, **_options(prefix))

        async def outage() -> None:
            await asyncio.sleep(0.3)
            proxy.pause()
            await asyncio.sleep(2.0)
            proxy.resume()

        try:
            ledger = await run_with_faults(publisher, consumer, outage, "away 2 s", port)
            assert ledger.failed_publishes > 0  # publish raised during the outage
        finally:
            await publisher.aclose()
            await consumer.aclose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.define
class RedisServer:
    """A ``redis-server`` of this test's own, fsyncing every write to its AOF."""

    port: int
    directory: Path
    persistent: bool = True
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes" if self.persistent else "no",
                "--appendfsync", "always",
                "--dir", str(self.directory),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as connection,
            ):
                connection.sendall(b"PING\r\n")
                if connection.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        pytest.fail(f"redis-server did not answer on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    server = RedisServer(_free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_sigkill_and_restart_of_redis_loses_nothing_confirmed(own_redis: RedisServer) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    publisher = RedisStreamsTransport.from_url(url, **_options("ebfault:"))
    consumer = RedisStreamsTransport.from_url(url, **_options("ebfault:"))

    async def kills() -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            own_redis.kill()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(own_redis.start)

    try:
        ledger = await run_with_faults(publisher, consumer, kills, "SIGKILL twice", own_redis.port)
        assert ledger.failed_publishes > 0
    finally:
        await publisher.aclose()
        await consumer.aclose()


async def test_a_restart_that_lost_everything_is_survived(tmp_path: Path) -> None:
    """No persistence: the streams and groups are gone after the restart. The subscription
    makes its group again by itself and receives what is published afterwards."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server is not on PATH")
    server = RedisServer(_free_port(), tmp_path, persistent=False)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    transport = RedisStreamsTransport.from_url(url, **_options("ebfault:"))
    topic = f"t{uuid.uuid4().hex[:10]}.fault"
    iterator = transport.subscribe([topic], group="g")
    pending: asyncio.Future[Received] | None = None
    try:
        await transport.publish(topic, message(topic, b"before"))
        first = await asyncio.wait_for(iterator.__anext__(), 10)
        assert first.body == b"before"
        await first.ack()
        server.kill()
        await asyncio.to_thread(server.start)
        pending = asyncio.ensure_future(iterator.__anext__())
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(0.2)  # the group must exist again before the publish
                client = redis.asyncio.Redis(port=server.port)
                try:
                    groups = await client.xinfo_groups("ebfault:" + topic)
                except redis.exceptions.ResponseError:  # no such key yet
                    groups = []
                finally:
                    await client.aclose()
                if groups:
                    break
        await transport.publish(topic, message(topic, b"after"))
        after = await asyncio.wait_for(pending, 10)
        assert after.body == b"after"
        await after.ack()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        await iterator.aclose()  # type: ignore[attr-defined]
        await transport.aclose()
        server.kill()
