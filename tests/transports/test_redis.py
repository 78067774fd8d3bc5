"""The Redis Streams transport passes the transport contract, and keeps its own promises:
backlog for late groups, takeover with counts, safe trimming, deleted pending entries,
one round trip per publish."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from eventbus.errors import ConfigurationError, TransportError
from eventbus.transports import transport_from_url
from eventbus.typing import Transport
from tests.proxy import tcp_proxy
from tests.servers import fresh_name, remove_redis_keys, require_broker
from tests.transports.contract import WAIT, Consumer, TransportContract, message

redis = pytest.importorskip("redis")
from eventbus_contrib.redis import RedisStreamsTransport  # noqa: E402

CLAIM_IDLE = 1.0
"""Short, so takeovers happen within the test; long enough that a test's own consumer
acks what it holds before another one may take it."""


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture
def redis_url() -> str:
    return require_broker("redis")


class TestRedisStreamsTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = RedisStreamsTransport
    patient: ClassVar[dict[str, Any]] = {"claim_idle": 60.0}

    @pytest.fixture(autouse=True)
    def _namespace(self) -> Iterator[None]:
        self.url = require_broker("redis")
        self.prefix = f"{fresh_name()}:"
        yield
        remove_redis_keys(self.url, self.prefix)

    async def make(self, **options: Any) -> Transport:
        options.setdefault("prefix", self.prefix)
        options.setdefault("claim_idle", CLAIM_IDLE)
        options.setdefault("block", 0.1)
        transport = RedisStreamsTransport.from_url(self.url, **options)
        await transport.connect()
        return transport

    def secret_url(self, password: str, *, port: int | None) -> str | None:
        return f"redis://user:{password}@127.0.0.1:{port or _port(self.url)}/0"

    def redelivery_quiet(self) -> float:
        # a takeover happens claim_idle after the read, at the next scan (claim_idle / 2)
        return CLAIM_IDLE * 2 + 0.5

    def client(self) -> Any:
        return redis.asyncio.Redis.from_url(self.url)

    # -- what is specific to Redis -------------------------------------------------------

    async def test_a_dead_consumers_entries_are_taken_over_with_their_count(self) -> None:
        async with self.transport() as transport:
            first = await self.subscribed(transport)
            await transport.publish(
                self.topic, message(self.topic, b"a"), message(self.topic, b"b")
            )
            assert [r.delivery_count for r in await first.take(2)] == [1, 1]
            await first.close()
            second = Consumer(transport, [self.topic], self.group)
            got = await second.take(2)
            assert [(r.body, r.delivery_count) for r in got] == [(b"a", 2), (b"b", 2)]
            await second.close()
            third = Consumer(transport, [self.topic], self.group)
            got = await third.take(2)
            assert [(r.body, r.delivery_count) for r in got] == [(b"a", 3), (b"b", 3)]
            for received in got:
                await received.ack()
            await third.nothing(timeout=self.redelivery_quiet())
            await third.close()
            client = self.client()
            try:
                summary = await client.xpending(self.prefix + self.topic, self.group)
                assert summary["pending"] == 0
            finally:
                await client.aclose()

    async def test_a_nacked_entry_comes_back_before_those_not_yielded_yet(self) -> None:
        async with self.transport() as transport:
            await transport.publish(
                self.topic, *(message(self.topic, f"m{i}".encode()) for i in range(3))
            )
            iterator = transport.subscribe([self.topic], group=self.group)
            try:
                first = await iterator.__anext__()
                assert first.body == b"m0"
                await first.nack()
                order = [await iterator.__anext__() for _ in range(3)]
                assert [(r.body, r.delivery_count) for r in order] == [
                    (b"m0", 2),
                    (b"m1", 1),
                    (b"m2", 1),
                ]
                for received in order:
                    await received.ack()
            finally:
                await iterator.aclose()  # type: ignore[attr-defined]

    async def test_entries_read_but_never_yielded_are_handed_back_at_close(self) -> None:
        async with self.transport(claim_idle=30.0) as transport:
            await transport.publish(
                self.topic, *(message(self.topic, f"m{i}".encode()) for i in range(5))
            )
            iterator = transport.subscribe([self.topic], group=self.group)
            first = await iterator.__anext__()  # the other four were read with it
            assert first.body == b"m0"
            await iterator.aclose()  # type: ignore[attr-defined]
            async with self.consumer(transport) as successor:
                # at once, not after claim_idle; never yielded, so not counted as delivered
                got = await successor.take(4, timeout=5.0)
                assert [(r.body, r.delivery_count) for r in got] == [
                    (f"m{i}".encode(), 1) for i in range(1, 5)
                ]
                for received in got:
                    await received.ack()
                await successor.nothing()  # m0 was yielded: it waits for claim_idle
            await first.ack()

    async def test_trimming_never_removes_an_entry_a_group_still_needs(self) -> None:
        stream = self.prefix + self.topic
        client = self.client()
        async with self.transport() as transport:
            assert isinstance(transport, RedisStreamsTransport)
            bodies = [f"m{i}".encode() for i in range(20)]
            await transport.publish(self.topic, *(message(self.topic, b) for b in bodies))
            assert await transport.trim(self.topic, maxlen=5) == 0  # no group yet: all kept
            iterator = transport.subscribe([self.topic], group=self.group)
            try:
                got = [await iterator.__anext__() for _ in range(20)]
                for received in got[:10]:
                    await received.ack()
                pending = {r.message_id for r in got[10:]}
                # maxlen alone would keep the last 5; the 10 pending ones stay
                assert await transport.trim(self.topic, maxlen=5) == 10
                left = {_text(entry) for entry, _ in await client.xrange(stream)}
                assert left == pending
                # a second group that has read nothing yet keeps everything that is left
                late = transport.subscribe([self.topic], group=self.group + "-late")
                await client.xgroup_create(stream, self.group + "-late", id="0")
                for received in got[10:]:
                    await received.ack()
                assert await transport.trim(self.topic, maxlen=5) == 0
                await late.aclose()  # type: ignore[attr-defined]
                await client.xgroup_destroy(stream, self.group + "-late")
                assert await transport.trim(self.topic, maxlen=5) == 5
                assert await client.xlen(stream) == 5
            finally:
                await iterator.aclose()  # type: ignore[attr-defined]
                await client.aclose()

    async def test_publish_trims_by_maxlen_but_keeps_what_is_pending(self) -> None:
        stream = self.prefix + self.topic
        client = self.client()
        async with self.transport(maxlen=10) as transport:
            await client.xgroup_create(stream, self.group, id="0", mkstream=True)
            iterator = transport.subscribe([self.topic], group=self.group)
            try:
                await transport.publish(
                    self.topic, *(message(self.topic, f"a{i}".encode()) for i in range(30))
                )
                # nothing was read: the group needs all 30
                assert await client.xlen(stream) == 30
                got = [await iterator.__anext__() for _ in range(30)]
                for received in got:
                    await received.ack()
                await asyncio.sleep(1.05)  # automatic trims run at most once a second
                await transport.publish(self.topic, message(self.topic, b"last"))
                assert await client.xlen(stream) == 10
                assert (await client.xrevrange(stream, count=1))[0][1][b"body"] == b"last"
            finally:
                await iterator.aclose()  # type: ignore[attr-defined]
                await client.aclose()

    async def test_an_entry_deleted_while_pending_is_logged_not_fatal(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        stream = self.prefix + self.topic
        client = self.client()
        async with self.transport() as transport:
            first = await self.subscribed(transport)
            await transport.publish(
                self.topic, message(self.topic, b"gone"), message(self.topic, b"kept")
            )
            gone, _ = await first.take(2)
            await client.xdel(stream, gone.message_id)
            await first.close()
            with caplog.at_level(logging.WARNING, logger="eventbus.redis"):
                async with self.consumer(transport) as successor:
                    (kept,) = await successor.take()
                    assert kept.body == b"kept"
                    await kept.ack()
                    await transport.publish(self.topic, message(self.topic, b"after"))
                    (after,) = await successor.take()
                    assert after.body == b"after"
                    await after.ack()
            assert any(gone.message_id in r.getMessage() for r in caplog.records)
            assert (await client.xpending(stream, self.group))["pending"] == 0
        await client.aclose()

    async def test_a_deleted_entry_in_its_own_pending_list_after_a_reconnect(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        stream = self.prefix + self.topic
        client = self.client()
        with tcp_proxy(_port(self.url)) as proxy:
            url = f"redis://127.0.0.1:{proxy.port}/0"
            transport = RedisStreamsTransport.from_url(url, prefix=self.prefix, block=0.1)
            await transport.publish(
                self.topic, message(self.topic, b"gone"), message(self.topic, b"kept")
            )
            consumer = Consumer(transport, [self.topic], self.group)
            try:
                gone, kept = await consumer.take(2)
                await client.xdel(stream, gone.message_id)
                with caplog.at_level(logging.WARNING, logger="eventbus.redis"):
                    proxy.cut()
                    async with asyncio.timeout(WAIT):
                        # polling the server: there is no event to wait on
                        while (await client.xpending(stream, self.group))["pending"] != 1:
                            await asyncio.sleep(0.05)
                await consumer.nothing()  # kept is still held: not yielded twice
                await kept.ack()
                assert (await client.xpending(stream, self.group))["pending"] == 0
                assert any(gone.message_id in r.getMessage() for r in caplog.records)
            finally:
                await consumer.close()
                await transport.aclose()
                await client.aclose()

    async def test_a_publish_is_one_round_trip(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection

        sent: list[int] = []
        original = AbstractConnection.send_packed_command

        async def counting(self: Any, command: Any, check_health: bool = True) -> None:
            sent.append(1)
            await original(self, command, check_health)

        async with self.transport(maxlen=1000) as transport:
            monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
            await transport.publish(
                self.topic, *(message(self.topic, f"m{i}".encode()) for i in range(100))
            )
            monkeypatch.undo()
            assert len(sent) == 1
        client = self.client()
        try:
            assert await client.xlen(self.prefix + self.topic) == 100
        finally:
            await client.aclose()

    async def test_publish_fails_while_redis_is_away_and_works_again(self) -> None:
        with tcp_proxy(_port(self.url)) as proxy:
            transport = RedisStreamsTransport.from_url(
                f"redis://127.0.0.1:{proxy.port}/0", prefix=self.prefix
            )
            try:
                await transport.publish(self.topic, message(self.topic, b"before"))
                proxy.pause()
                with pytest.raises(TransportError):
                    await transport.publish(self.topic, message(self.topic, b"during"))
                proxy.resume()
                await transport.publish(self.topic, message(self.topic, b"after"))
            finally:
                await transport.aclose()

    async def test_warnings_while_unreachable_never_show_the_password(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        url = "redis://user:canary-s3cr3t-pw@127.0.0.1:1/0"
        transport = RedisStreamsTransport.from_url(url, prefix=self.prefix)
        iterator = transport.subscribe([self.topic], group=self.group)
        with caplog.at_level(logging.WARNING, logger="eventbus.redis"):
            task = asyncio.ensure_future(iterator.__anext__())
            await asyncio.sleep(0.5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await transport.aclose()
        assert caplog.records
        assert all("canary-s3cr3t-pw" not in r.getMessage() for r in caplog.records)
        assert "canary-s3cr3t-pw" not in caplog.text


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def test_the_url_schemes_resolve_to_this_transport() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0"):
        assert isinstance(transport_from_url(url), RedisStreamsTransport)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"claim_idle": 0}, "claim_idle"),
        ({"claim_idle": float("inf")}, "claim_idle"),
        ({"block": -1}, "block"),
        ({"batch": 0}, "batch"),
        ({"batch": 2.5}, "batch"),
        ({"maxlen": 0}, "maxlen"),
        ({"maxlen": True}, "maxlen"),
        ({"prefix": 3}, "prefix"),
        ({"blocks": 1.0}, "blocks"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        RedisStreamsTransport.from_url("redis://127.0.0.1:6379/0", **options)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("amqp://127.0.0.1", "redis://"),
        ("redis://127.0.0.1:6379/0?retry_on_timeout=true", "retry_on_timeout"),
        ("redis://127.0.0.1:6379/0?ssl_certfile=x", "ssl_certfile"),
        ("redis://127.0.0.1:6379/0?socket_timeout=0.5", "socket_timeout"),
        ("redis://:pw@127.0.0.1:notaport/0", "not valid"),
    ],
)
def test_bad_urls_are_refused_and_say_why(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        RedisStreamsTransport.from_url(url)
    assert ":pw@" not in str(caught.value)


def test_the_url_query_carries_the_transports_own_options() -> None:
    transport = RedisStreamsTransport.from_url(
        "redis://127.0.0.1:6379/0?prefix=shop:&claim_idle=5&batch=7&socket_timeout=20",
        batch=9,
    )
    assert (transport.prefix, transport.claim_idle, transport.batch) == ("shop:", 5.0, 9)
    assert "prefix" not in transport._url
    assert "socket_timeout=20" in transport._url
