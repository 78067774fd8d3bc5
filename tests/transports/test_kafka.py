"""The Kafka transport passes the transport contract, plus what is Kafka's own: keys to
partitions, size limits, the idempotent producer's refusal, namespaced topics and groups,
and delivery counts after a consumer died (kept by the group at the broker).

Runs against the broker of ``EVENTBUS_TEST_KAFKA_URL``, or the tansu test broker
(``tests/kafka_broker.py``). Each test's topics and groups carry a prefix of its own and
are deleted at teardown.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from eventbus import EventBus, EventRegistry, SQLiteOutbox, event
from eventbus.errors import ConfigurationError, MessageRejectedError, TransportError
from eventbus.transports import Message, transport_from_url
from eventbus.typing import Transport
from tests.servers import BrokerNamespace, broker_namespace, require_broker
from tests.transports.contract import Consumer, TransportContract, message

pytest.importorskip("aiokafka")

from eventbus_contrib.kafka import KafkaTransport

REPO = Path(__file__).resolve().parents[2]


class TestKafkaTransport(TransportContract):
    transport_class: ClassVar[type[Transport]] = KafkaTransport

    @pytest.fixture(autouse=True)
    def _namespace(self) -> Iterator[None]:
        with broker_namespace("kafka") as self.space:
            yield

    async def make(self, **options: Any) -> Transport:
        transport = KafkaTransport.from_url(self.space.url, **options)
        await transport.connect()
        return transport

    def secret_url(self, password: str, *, port: int | None) -> str | None:
        return f"kafka://eventbus:{password}@127.0.0.1:{port or 9092}"

    def redelivery_quiet(self) -> float:
        # A new member's first assignment takes half a session timeout at tansu (6 s):
        # a redelivery that must not come would come after that.
        return 5.0

    # -- Kafka's own -----------------------------------------------------------------------

    async def test_topics_and_the_group_carry_the_prefix(self) -> None:
        from tests import kafka_broker

        async with self.transport() as transport:
            async with self.consumer(transport) as consumer:
                await transport.publish(self.topic, message(self.topic, b"x", key="k"))
                (received,) = await consumer.take()
                await received.ack()
            topics, groups = await kafka_broker.names(self.space.base_url)
        prefix = self.space.name
        assert f"{prefix}.{self.topic}" in topics
        assert f"{prefix}.{self.group}" in groups
        assert any(t.startswith(f"{prefix}..deliveries.") for t in topics)

    async def test_a_message_over_the_size_limit_is_rejected_and_its_batch_unsent(self) -> None:
        async with self.transport(max_message_bytes=10_000) as transport:
            consumer = await self.subscribed(transport)
            try:
                small = message(self.topic, b"small", key="k")
                huge = message(self.topic, b"x" * 10_001, key="k")
                with pytest.raises(MessageRejectedError, match="max_message_bytes"):
                    await transport.publish(self.topic, small, huge)
                await transport.publish(self.topic, message(self.topic, b"next", key="k"))
                (received,) = await consumer.take()
                assert received.body == b"next"  # nothing of the refused batch went out
                await received.ack()
            finally:
                await consumer.close()

    async def test_one_key_goes_to_one_partition(self) -> None:
        async with self.transport(partitions=4) as transport:
            consumer = await self.subscribed(transport)
            try:
                sent = [message(self.topic, f"{i}".encode(), key=f"k{i % 3}") for i in range(30)]
                await transport.publish(self.topic, *sent)
                got = await consumer.take(30)
                partitions: dict[bytes, set[str]] = {}
                for received, original in zip(
                    sorted(got, key=lambda r: int(r.body)), sent, strict=True
                ):
                    assert original.key is not None
                    partition = received.message_id.split(":")[1]
                    partitions.setdefault(original.key.encode(), set()).add(partition)
                    await received.ack()
                assert all(len(each) == 1 for each in partitions.values())
            finally:
                await consumer.close()

    async def test_closing_the_transport_ends_its_subscriptions_and_hands_over(self) -> None:
        transport = await self.make()
        consumer = await self.subscribed(transport)
        await transport.publish(
            self.topic, *(message(self.topic, f"m{i}".encode(), key="k") for i in range(2))
        )
        held = await consumer.take(2)
        await transport.aclose()
        async with asyncio.timeout(10):
            await consumer._task  # the iteration ended by itself
        async with self.transport() as fresh, self.consumer(fresh) as successor:
            # An orderly handover: both at once (not one at a time, as after a death),
            # each counted.
            again = await successor.take(2)
            assert [(r.body, r.delivery_count) for r in again] == [(b"m0", 2), (b"m1", 2)]
            for received in again:
                await received.ack()
        for received in held:
            await received.ack()  # after the handover: a no-op, not an error

    async def test_a_killed_consumers_messages_come_back_one_at_a_time_counted(
        self, tmp_path: Path
    ) -> None:
        """A consumer that dies (SIGKILL: no handover) left no word of what it held: the
        next owner hands each message it may have held out alone, counted as delivered
        again, and a message that kills it once more comes back counted once more."""
        async with self.transport() as transport:
            await transport.publish(
                self.topic, *(message(self.topic, f"m{i}".encode(), key="k") for i in range(4))
            )
            await _die_holding(self.space.url, self.topic, self.group, 3, tmp_path)
            successor = Consumer(transport, [self.topic], self.group)
            try:
                (first,) = await successor.take()
                assert (first.body, first.delivery_count) == (b"m0", 2)
                await successor.nothing(timeout=1.0)  # alone: m1 waits for m0
                await first.ack()
                (second,) = await successor.take()
                assert (second.body, second.delivery_count) == (b"m1", 2)
            finally:
                await successor.close()  # holding m1: handed over in order, counted
            await _die_holding(self.space.url, self.topic, self.group, 1, tmp_path)
            async with self.consumer(transport) as last:
                (again,) = await last.take()
                assert (again.body, again.delivery_count) == (b"m1", 4)
                await again.ack()
                for body in (b"m2", b"m3"):  # still one at a time, each counted once more
                    (received,) = await last.take()
                    assert (received.body, received.delivery_count) == (body, 2)
                    await received.ack()


NOTES = EventRegistry()


@event("kafka.note_written", registry=NOTES)
class NoteWritten:
    text: str


class TestOversizeThroughTheRelay:
    async def test_an_event_over_the_size_limit_is_dead_lettered_and_the_rest_delivered(
        self, tmp_path: Path
    ) -> None:
        seen: list[int] = []
        with broker_namespace("kafka") as space:
            outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
            bus = EventBus(
                registry=NOTES,
                outbox=outbox,
                transport=KafkaTransport.from_url(space.url, max_message_bytes=2_000),
                group=space.group(),
            )

            @bus.subscribe(delivery="durable", name="notes.keep")
            def keep(event: NoteWritten) -> None:
                seen.append(len(event.text))

            try:
                await bus.astart()
                connection = outbox.connect()
                with bus.transaction(connection):
                    for size in (10, 5_000, 20):
                        bus.publish(NoteWritten(text="x" * size), key="note")
                connection.close()
                async with asyncio.timeout(30):
                    while len(seen) < 2 or bus.dead_letters.count() < 1:
                        await asyncio.sleep(0.05)
                (letter,) = bus.dead_letters.list()
                assert letter.handler == "@transport"
                assert "max_message_bytes" in letter.message
                assert bus.codec.decode(letter.payload).event == NoteWritten(text="x" * 5_000)
                assert seen == [10, 20]
                assert outbox.status().pending == 0
            finally:
                await bus.aclose()
                outbox.close()


async def _die_holding(url: str, topic: str, group: str, count: int, folder: Path) -> None:
    """A child process takes ``count`` messages of ``group``, says so, and is killed."""
    script = folder / "die.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, os, signal, sys
            from eventbus.transports import transport_from_url

            async def main():
                transport = transport_from_url({url!r})
                await transport.connect()
                iterator = transport.subscribe([{topic!r}], group={group!r})
                for _ in range({count}):
                    await iterator.__anext__()
                print("holding", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

            asyncio.run(main())
            """
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = await process.stdout.readline()
        await process.wait()
    assert line.strip() == b"holding"
    assert process.returncode == -9


class TestKafkaProducerSettings:
    @pytest.fixture
    def space(self) -> Iterator[BrokerNamespace]:
        with broker_namespace("kafka") as made:
            yield made

    async def test_a_broker_that_refuses_the_idempotent_producer_gets_a_clear_error(
        self, space: BrokerNamespace
    ) -> None:
        if os.environ.get("EVENTBUS_TEST_KAFKA_URL"):
            pytest.skip("only the tansu test broker is known to refuse the idempotent producer")
        # tansu's memory store refuses aiokafka's InitProducerId (v0): the error says what
        # was refused and what to do.
        transport = KafkaTransport.from_url(space.url, idempotent=True)
        try:
            with pytest.raises(TransportError, match=r"InitProducerId.*idempotent=false"):
                await transport.connect()
        finally:
            await transport.aclose()


async def test_the_producer_is_idempotent_and_waits_for_every_replica() -> None:
    for url, idempotent in (("kafka://h", True), ("kafka://h?idempotent=false", False)):
        producer = KafkaTransport.from_url(url).make_producer()
        try:
            assert (producer._txn_manager is not None) is idempotent
            assert producer._sender._acks == -1  # acks=all, idempotent or not
        finally:
            await producer.stop()


# -- URLs and options, no broker needed ----------------------------------------------------


def test_the_url_schemes_resolve_to_this_transport() -> None:
    assert isinstance(transport_from_url("kafka://127.0.0.1:9092"), KafkaTransport)
    assert isinstance(transport_from_url("kafkas://127.0.0.1:9093"), KafkaTransport)


def test_options_come_from_keywords_and_the_query_keywords_winning() -> None:
    transport = KafkaTransport.from_url(
        "kafka://a,b:9093?prefix=shop&partitions=12&idempotent=false&batch=7", batch=9
    )
    chosen = transport.options
    assert (chosen.prefix, chosen.partitions, chosen.idempotent, chosen.batch) == (
        "shop",
        12,
        False,
        9,
    )
    assert transport.endpoint.hosts == ("a:9092", "b:9093")
    assert transport.topic("shop.order_placed") == "shop.shop.order_placed"
    assert transport.group_id("billing") == "shop.billing"
    assert transport.state_topic("billing").startswith("shop..deliveries.billing-")


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("kafka://h", {"prefixx": "x"}, r"no option 'prefixx'"),
        ("kafka://h?partitons=3", {}, r"'partitons' \(did you mean 'partitions'\?\)"),
        ("kafka://h", {"prefix": "a b"}, "topic prefix"),
        ("kafka://h", {"partitions": 0}, "partitions"),
        ("kafka://h", {"batch": 2.5}, "whole number"),
        ("kafka://h", {"session_timeout": 3}, "6 s"),
        ("kafka://h", {"publish_timeout": -1}, "positive number"),
        ("kafka://h", {"sasl_mechanism": "GSSAPI"}, "SCRAM-SHA-512"),
        ("kafka://h?idempotent=maybe", {}, "true or false"),
        ("kafka://h/topic", {}, "no path"),
        ("redis://h", {}, "kafka:// or kafkas://"),
    ],
)
def test_bad_urls_and_options_are_named(url: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        KafkaTransport.from_url(url, **options)


def test_credentials_become_sasl_and_never_show() -> None:
    plain = KafkaTransport.from_url("kafka://me:pa%40ss@host")
    settings = plain.endpoint.client_settings(plain.options)
    assert settings["security_protocol"] == "SASL_PLAINTEXT"
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("me", "pa@ss")
    assert "pa@ss" not in repr(plain)
    assert "pa%40ss" not in repr(plain)
    tls = KafkaTransport.from_url("kafkas://me:secret@host:9093?sasl_mechanism=scram-sha-512")
    settings = tls.endpoint.client_settings(tls.options)
    assert (settings["security_protocol"], settings["sasl_mechanism"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert settings["ssl_context"] is not None
    anonymous = KafkaTransport.from_url("kafkas://host:9093")
    assert anonymous.endpoint.client_settings(anonymous.options)["security_protocol"] == "SSL"


async def test_publish_refuses_other_objects_and_topics_before_connecting() -> None:
    transport = KafkaTransport.from_url("kafka://127.0.0.1:1")
    with pytest.raises(TransportError, match="takes Messages"):
        await transport.publish("a.b", Message(uuid.uuid4(), "a.c", None, b"x"))
    with pytest.raises(MessageRejectedError, match="not a topic"):
        await transport.publish("a..b", Message(uuid.uuid4(), "a..b", None, b"x"))
    with pytest.raises(MessageRejectedError, match="max_message_bytes"):
        await transport.publish("a.b", Message(uuid.uuid4(), "a.b", None, b"x" * 2_000_000))
    await transport.aclose()


def test_the_test_broker_runs_here() -> None:
    """The Kafka tests need a broker: skipped with the reason without one, failed in CI."""
    assert require_broker("kafka").startswith("kafka://")
