"""The NATS JetStream transport passes the transport contract, plus what is JetStream's own:
message-id dedup, max_payload, ack_wait redelivery, deliver policy all, stream checks.

Each test gets a stream and a subject prefix of its own (this run's, see tests/servers.py),
deleted at teardown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from eventbus.errors import ConfigurationError, MessageRejectedError, TransportError
from eventbus.transports import Message, transport_from_url
from eventbus.typing import Transport
from tests.servers import fresh_name, remove_nats_streams, require_broker
from tests.transports.contract import Consumer, TransportContract, message

nats = pytest.importorskip("nats")

from eventbus_contrib.nats import NATSTransport  # noqa: E402 - after the importorskip

ACK_WAIT = 3.0
"""Seconds before an unacked message is redelivered, in these tests: short, yet long
enough that a loaded machine does not see redeliveries a test does not expect."""


def _names() -> tuple[str, str]:
    """A stream and the subject prefix it captures."""
    name = fresh_name()
    return name.upper(), name


@pytest.fixture
def nats_url() -> str:
    return require_broker("nats")


@pytest.fixture
def streams(nats_url: str) -> Iterator[list[str]]:
    """Streams a test made, deleted afterwards (the server is shared, and file-backed)."""
    made: list[str] = []
    yield made
    if made:
        remove_nats_streams(nats_url, made)


class TestNATSTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = NATSTransport
    patient: ClassVar[dict[str, Any]] = {"ack_wait": 60.0}

    @pytest.fixture(autouse=True)
    def _namespace(self, nats_url: str, streams: list[str]) -> None:
        self.url = nats_url
        self.stream, self.prefix = _names()
        streams.append(self.stream)

    async def make(self, **options: Any) -> Transport:
        options.setdefault("stream", self.stream)
        options.setdefault("prefix", self.prefix)
        options.setdefault("ack_wait", ACK_WAIT)
        transport = NATSTransport.from_url(self.url, **options)
        await transport.connect()
        return transport

    def secret_url(self, password: str, *, port: int | None) -> str | None:
        return f"nats://eventbus:{password}@127.0.0.1:{port or 4222}"

    def redelivery_quiet(self) -> float:
        return ACK_WAIT + 1.0

    # -- JetStream's own ---------------------------------------------------------------

    async def test_a_republished_message_id_is_stored_once(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                twice = message(self.topic, b"retried after a lost PubAck")
                await transport.publish(self.topic, twice)
                await transport.publish(self.topic, twice, message(self.topic, b"next"))
                got = await consumer.take(2)
                assert [r.body for r in got] == [twice.body, b"next"]
                for received in got:
                    await received.ack()
                await consumer.nothing()
            finally:
                await consumer.close()

    async def test_a_message_over_max_payload_is_rejected_and_its_batch_unsent(self) -> None:
        async with self.transport() as transport:
            limit = transport._nc.max_payload  # type: ignore[attr-defined]
            consumer = await self.subscribed(transport)
            try:
                small = message(self.topic, b"small")
                huge = message(self.topic, b"x" * limit)
                with pytest.raises(MessageRejectedError, match="max_payload"):
                    await transport.publish(self.topic, small, huge)
                await consumer.nothing()
                # Headers count: the largest body the server takes still goes through.
                from eventbus_contrib.nats import _HEADER_BYTES

                largest = message(self.topic, b"y" * (limit - _HEADER_BYTES))
                await transport.publish(self.topic, largest)
                (received,) = await consumer.take()
                assert received.body == largest.body
                await received.ack()
            finally:
                await consumer.close()

    async def test_the_first_publish_of_an_unconnected_transport_checks_the_size(self) -> None:
        transport = NATSTransport.from_url(self.url, stream=self.stream, prefix=self.prefix)
        try:
            with pytest.raises(MessageRejectedError, match="max_payload"):
                await transport.publish(self.topic, message(self.topic, b"x" * 2**21))
        finally:
            await transport.aclose()

    async def test_an_unacked_message_comes_back_after_ack_wait_counted(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                await transport.publish(self.topic, message(self.topic, b"slow"))
                (first,) = await consumer.take()
                assert first.delivery_count == 1
                await consumer.nothing(timeout=ACK_WAIT * 0.5)  # not before ack_wait
                (again,) = await consumer.take(timeout=ACK_WAIT * 4)
                assert again.body == b"slow"
                assert again.delivery_count == 2
                assert again.message_id == first.message_id  # the same stream entry
                await again.ack()
                await consumer.nothing(timeout=ACK_WAIT + 0.5)
            finally:
                await consumer.close()

    async def test_a_group_that_adds_a_topic_keeps_its_place_in_the_first(self) -> None:
        async with self.transport() as transport:
            async with self.consumer(transport) as consumer:
                await transport.publish(self.topic, message(self.topic, b"a1"))
                (received,) = await consumer.take()
                await received.ack()
            await transport.publish(self.topic, message(self.topic, b"a2"))
            await transport.publish(self.other, message(self.other, b"b1"))
            async with self.consumer(transport, topics=[self.topic, self.other]) as consumer:
                got = await consumer.take(2)
                assert sorted(r.body for r in got) == [b"a2", b"b1"]  # not a1 again
                for received in got:
                    await received.ack()
                await consumer.nothing()

    async def test_messages_survive_a_new_connection(self) -> None:
        async with self.transport() as transport:
            await transport.publish(self.topic, message(self.topic, b"kept"))
        async with self.transport() as transport, self.consumer(transport) as consumer:
            (received,) = await consumer.take()
            assert received.body == b"kept"
            await received.ack()

    async def test_closing_the_transport_ends_its_subscriptions_and_hands_back(self) -> None:
        transport = await self.make()
        consumer = await self.subscribed(transport)
        await transport.publish(self.topic, message(self.topic, b"held"))
        (held,) = await consumer.take()
        await transport.aclose()
        async with asyncio.timeout(5):
            await consumer._task  # the iterator ended by itself
        async with self.transport() as fresh, self.consumer(fresh) as successor:
            (again,) = await successor.take(timeout=ACK_WAIT * 0.8)  # naked: before ack_wait
            assert again.body == b"held"
            await again.ack()
        await held.ack()  # after the handover: a no-op, not an error

    async def test_a_stream_that_captures_other_subjects_is_refused(self) -> None:
        async with self.transport():
            pass  # made the stream, capturing {prefix}.>
        other = NATSTransport.from_url(self.url, stream=self.stream, prefix=self.prefix + "x")
        with pytest.raises(ConfigurationError, match="exists with subjects"):
            await other.connect()
        await other.aclose()

    async def test_a_prefix_another_stream_captures_is_refused(self, streams: list[str]) -> None:
        async with self.transport():
            pass
        stream, _ = _names()
        streams.append(stream)
        other = NATSTransport.from_url(self.url, stream=stream, prefix=self.prefix)
        with pytest.raises(ConfigurationError, match="already captures"):
            await other.connect()
        await other.aclose()

    async def test_publish_refuses_a_topic_that_is_no_subject(self) -> None:
        async with self.transport() as transport:
            for bad in ("a.>", "a b", "a..b", "*"):
                with pytest.raises(MessageRejectedError, match="not a NATS subject"):
                    await transport.publish(bad, message(bad, b"x"))
            with pytest.raises(ConfigurationError):
                await transport.subscribe(["a.*"], group=self.group).__anext__()

    async def test_a_stranger_publishing_to_the_inbox_does_not_end_the_subscription(
        self,
    ) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                (subscription,) = transport._subscriptions  # type: ignore[attr-defined]
                nc = transport._nc  # type: ignore[attr-defined]
                await nc.publish(f"{subscription.inbox}.0.{subscription.pulls[0].serial}", b"?")
                await transport.publish(self.topic, message(self.topic, b"real"))
                (received,) = await consumer.take()
                assert received.body == b"real"
                await received.ack()
            finally:
                await consumer.close()

    async def test_a_group_name_of_any_characters_gets_a_valid_durable(self) -> None:
        async with self.transport() as transport:
            await transport.publish(self.topic, message(self.topic, b"x"))
            async with self.consumer(transport, group="billing.v2 / *>") as consumer:
                (received,) = await consumer.take()
                await received.ack()

    async def test_consumers_of_one_group_in_two_connections_share_the_work(self) -> None:
        async with self.transport() as one, self.transport() as two:
            first = Consumer(one, [self.topic], self.group)
            second = Consumer(two, [self.topic], self.group)
            await asyncio.sleep(0.3)
            try:
                await one.publish(
                    self.topic, *(message(self.topic, f"m{i}".encode()) for i in range(20))
                )
                got: list[bytes] = []
                async with asyncio.timeout(10):
                    while len(got) < 20:
                        for consumer in (first, second):
                            while not consumer._queue.empty():
                                received = consumer._queue.get_nowait()
                                got.append(received.body)
                                await received.ack()
                        await asyncio.sleep(0.01)
                assert sorted(got) == sorted(f"m{i}".encode() for i in range(20))
            finally:
                await first.close()
                await second.close()


# -- URLs and options, no server needed --------------------------------------------------


def test_the_url_scheme_resolves_to_this_transport() -> None:
    assert isinstance(transport_from_url("nats://127.0.0.1:4222"), NATSTransport)
    assert isinstance(transport_from_url("tls://127.0.0.1:4222"), NATSTransport)


def test_options_come_from_keywords_and_the_query_keywords_winning() -> None:
    transport = NATSTransport.from_url(
        "nats://127.0.0.1?stream=ORDERS&batch=7&ack_wait=2.5&max_deliver=none", batch=9
    )
    options = transport._options
    assert (options.stream, options.batch, options.ack_wait) == ("ORDERS", 9, 2.5)
    assert options.max_deliver is None
    assert transport._endpoint.hosts == ("127.0.0.1:4222",)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"streams": "X"}, r"no option 'streams' \(did you mean 'stream'\?\)"),
        ({"stream": "a.b"}, "stream name"),
        ({"prefix": "a.*"}, "subject prefix"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"max_deliver": 0}, "max_deliver"),
        ({"batch": 0}, "batch"),
        ({"batch": "many"}, "not a number"),
        ({"batch": 2.5}, "whole number"),
        ({"max_deliver": True}, "whole number"),
        ({"ack_wait": True}, "number of seconds"),
        ({"stream": 3}, "must be a string"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        NATSTransport.from_url("nats://127.0.0.1:4222", **options)


def test_other_urls_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="nats:// or tls://"):
        NATSTransport.from_url("redis://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="no path"):
        NATSTransport.from_url("nats://127.0.0.1:4222/EVENTS")


def test_credentials_never_show_and_several_servers_are_kept() -> None:
    token = NATSTransport.from_url("nats://s3cr3t-token@a:4222,b")
    assert "s3cr3t-token" not in repr(token)
    assert token._endpoint.token == "s3cr3t-token"
    assert token._endpoint.servers == ["nats://a:4222", "nats://b:4222"]
    user = NATSTransport.from_url("tls://me:pa%40ss@host:4443")
    assert (user._endpoint.user, user._endpoint.password) == ("me", "pa@ss")
    assert "pa@ss" not in repr(user)
    assert "pa%40ss" not in repr(user)
    assert user._endpoint.servers == ["tls://host:4443"]  # no secret in what nats-py sees


async def test_publish_refuses_other_objects_before_connecting() -> None:
    transport = NATSTransport.from_url("nats://127.0.0.1:1")
    with pytest.raises(TransportError, match="takes Messages"):
        await transport.publish("a.b", Message(uuid.uuid4(), "a.c", None, b"x"))


class TestNATSConsumerSettings:
    async def test_a_changed_ack_wait_updates_the_groups_consumer(
        self, nats_url: str, streams: list[str]
    ) -> None:
        stream, prefix = _names()
        streams.append(stream)
        topic, group = "orders.placed", "billing"
        for ack_wait in (ACK_WAIT, 7.0):
            transport = NATSTransport.from_url(
                nats_url, stream=stream, prefix=prefix, ack_wait=ack_wait, max_deliver=5
            )
            await transport.connect()
            consumer = Consumer(transport, [topic], group)
            await transport.publish(topic, message(topic, b"x"))
            (received,) = await consumer.take()
            await received.ack()
            await consumer.close()
            await transport.aclose()
        from eventbus_contrib.nats import _durable

        client = await nats.connect(nats_url)
        try:
            info = await client.jetstream().consumer_info(stream, _durable(group, topic))
        finally:
            await client.close()
        assert (info.config.ack_wait, info.config.max_deliver) == (7.0, 5)
