"""The transport contract: every transport passes these tests, switched by capabilities.

A backend subclasses ``TransportContract`` in ``tests/transports/test_<name>.py`` and
provides ``make`` (a connected-on-demand transport whose topics and groups are fresh for
this test: a namespace of its own, which the backend's fixture removes from the broker at
teardown) and, optionally, ``url`` and ``secret_url`` for the configuration and secrecy
tests. Tests never ask for a backend by
name: they read ``capabilities``.

Delivery waits are bounded (``WAIT``), and a transport that redelivers only after a
timeout (a Redis min-idle, a NATS ack-wait) is made with short ones by its ``make``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import pytest

from eventbus.errors import ConfigurationError, TransportError
from eventbus.transports import Capabilities, Message
from eventbus.typing import Received, Transport

WAIT = 20.0
"""Seconds a test waits for a delivery it expects."""
QUIET = 0.5
"""Seconds a test waits to be sure a delivery it does not expect does not come."""


def message(topic: str, body: bytes, key: str | None = None) -> Message:
    return Message(uuid.uuid4(), topic, key, body)


class Consumer:
    """One subscription, read by a background task into a queue the test takes from."""

    def __init__(self, transport: Transport, topics: Sequence[str], group: str) -> None:
        self._iterator = transport.subscribe(topics, group=group)
        self._queue: asyncio.Queue[Received] = asyncio.Queue()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for received in self._iterator:
            await self._queue.put(received)

    async def take(self, count: int = 1, timeout: float = WAIT) -> list[Received]:
        got: list[Received] = []
        try:
            async with asyncio.timeout(timeout):
                while len(got) < count:
                    if self._task.done() and self._queue.empty():
                        self._task.result()  # the subscription failed: show why
                        pytest.fail("the subscription ended")
                    got.append(await self._queue.get())
        except TimeoutError:
            pytest.fail(f"expected {count} messages within {timeout} s, got {len(got)}")
        return got

    async def nothing(self, timeout: float = QUIET) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                received = await self._queue.get()
                pytest.fail(f"expected no message, got {received!r} ({received.body!r})")

    async def close(self) -> None:
        """Stop consuming without acknowledging what is held: as if the consumer died."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(Exception):
            await self._iterator.aclose()  # type: ignore[attr-defined]


class TransportContract:
    """What every transport promises. Subclass per backend; provide ``make``."""

    transport_class: ClassVar[type[Transport]]
    patient: ClassVar[dict[str, Any]] = {}
    """Options under which a message held but not yet settled stays with its consumer for
    longer than any test: for the tests that are not about redelivery, whose consumers a
    busy machine can leave holding messages past a short redelivery time."""

    @property
    def capabilities(self) -> Capabilities:
        return self.transport_class.capabilities

    async def make(self, **options: Any) -> Transport:
        """A connected transport in a namespace of this test's own."""
        raise NotImplementedError

    def secret_url(self, password: str, *, port: int | None) -> str | None:
        """A URL of this transport whose password is ``password`` (on ``port`` of
        127.0.0.1 if given, else its usual place), or None if its URLs take none."""
        return None

    @pytest.fixture(autouse=True)
    def _fresh(self) -> None:
        self.topic = f"t{uuid.uuid4().hex[:10]}.placed"
        self.other = f"t{uuid.uuid4().hex[:10]}.cancelled"
        self.group = f"g{uuid.uuid4().hex[:10]}"

    @contextlib.asynccontextmanager
    async def transport(self, **options: Any) -> AsyncIterator[Transport]:
        transport = await self.make(**options)
        try:
            yield transport
        finally:
            await transport.aclose()

    @contextlib.asynccontextmanager
    async def consumer(
        self, transport: Transport, topics: Sequence[str] | None = None, group: str | None = None
    ) -> AsyncIterator[Consumer]:
        consumer = Consumer(transport, topics or [self.topic], group or self.group)
        try:
            yield consumer
        finally:
            await consumer.close()

    async def subscribed(self, transport: Transport, **kwargs: Any) -> Consumer:
        """A consumer whose group exists at the broker before the test publishes."""
        consumer = Consumer(transport, kwargs.get("topics") or [self.topic], self.group)
        await asyncio.sleep(0.3)  # let the subscription declare its group or queue
        return consumer

    # -- what arrives ------------------------------------------------------------------

    async def test_a_message_arrives_with_its_bytes_and_topic(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                body = b'{"n":1}\x00\xff binary-safe'
                await transport.publish(self.topic, message(self.topic, body, key="o-1"))
                (received,) = await consumer.take()
                assert received.body == body
                assert received.topic == self.topic
                assert received.delivery_count == 1
                assert isinstance(received.message_id, str)
                assert received.message_id
                await received.ack()
            finally:
                await consumer.close()

    async def test_a_batch_arrives_whole_and_in_order(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                bodies = [f"m{i}".encode() for i in range(300)]
                await transport.publish(
                    self.topic,
                    *(message(self.topic, b, key=f"k{i % 7}") for i, b in enumerate(bodies)),
                )
                got = await consumer.take(300)
                assert sorted(r.body for r in got) == sorted(bodies)
                if self.capabilities.ordered_per_key:
                    # each key in order (a partitioned topic interleaves keys)
                    for key in range(7):
                        theirs = [b for i, b in enumerate(bodies) if i % 7 == key]
                        assert [r.body for r in got if r.body in theirs] == theirs
                for received in got:
                    await received.ack()
            finally:
                await consumer.close()

    async def test_one_subscription_reads_several_topics_and_only_those(self) -> None:
        unrelated = f"t{uuid.uuid4().hex[:10]}.shipped"
        async with self.transport() as transport:
            consumer = await self.subscribed(transport, topics=[self.topic, self.other])
            try:
                await transport.publish(self.topic, message(self.topic, b"a"))
                await transport.publish(self.other, message(self.other, b"b"))
                with contextlib.suppress(TransportError):  # no queue for it: may be refused
                    await transport.publish(unrelated, message(unrelated, b"c"))
                got = await consumer.take(2)
                assert {(r.topic, r.body) for r in got} == {(self.topic, b"a"), (self.other, b"b")}
                await consumer.nothing()
                for received in got:
                    await received.ack()
            finally:
                await consumer.close()

    async def test_each_group_gets_every_message(self) -> None:
        async with self.transport() as transport:
            first = await self.subscribed(transport)
            second = Consumer(transport, [self.topic], self.group + "-2")
            await asyncio.sleep(0.3)
            try:
                await transport.publish(
                    self.topic, message(self.topic, b"x"), message(self.topic, b"y")
                )
                for consumer in (first, second):
                    got = await consumer.take(2)
                    assert sorted(r.body for r in got) == [b"x", b"y"]
                    for received in got:
                        await received.ack()
            finally:
                await first.close()
                await second.close()

    async def test_consumers_of_one_group_share_the_messages(self) -> None:
        if not self.capabilities.consumer_groups:
            pytest.skip("this transport has no consumer groups")
        async with self.transport(**self.patient) as transport:
            first = await self.subscribed(transport)
            second = Consumer(transport, [self.topic], self.group)
            await asyncio.sleep(0.3)
            try:
                bodies = {f"m{i}".encode() for i in range(40)}
                await transport.publish(self.topic, *(message(self.topic, b) for b in bodies))
                seen: list[bytes] = []
                async with asyncio.timeout(WAIT):
                    while len(seen) < len(bodies):
                        for consumer in (first, second):
                            try:
                                async with asyncio.timeout(0.05):
                                    received = await consumer._queue.get()
                            except TimeoutError:
                                continue
                            seen.append(received.body)
                            # Outside the short timeout: an ack cut off by it, on a busy
                            # machine, left the message to come back to the other consumer.
                            await received.ack()
                assert sorted(seen) == sorted(bodies)  # each exactly once
                await first.nothing()
                await second.nothing()
            finally:
                await first.close()
                await second.close()

    # -- acknowledgements and redelivery -----------------------------------------------

    async def test_an_acknowledged_message_is_not_delivered_again(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            await transport.publish(self.topic, message(self.topic, b"once"))
            (received,) = await consumer.take()
            await received.ack()
            await consumer.close()
            async with self.consumer(transport) as again:
                await again.nothing(timeout=self.redelivery_quiet())

    def redelivery_quiet(self) -> float:
        """How long to watch for a redelivery that must not come (past any min-idle)."""
        return QUIET * 4

    async def test_a_consumer_that_stops_without_ack_hands_its_messages_back(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            await transport.publish(
                self.topic, *(message(self.topic, f"m{i}".encode(), key="k") for i in range(3))
            )
            got = await consumer.take(3)
            await got[0].ack()
            await consumer.close()  # died holding m1 and m2
            async with self.consumer(transport) as successor:
                again = await successor.take(2)
                assert [r.body for r in again] == [b"m1", b"m2"]
                if self.capabilities.counts_deliveries:
                    assert [r.delivery_count for r in again] == [2, 2]
                for received in again:
                    await received.ack()
                await successor.nothing()

    async def test_a_message_being_touched_stays_with_its_consumer(self) -> None:
        """A slow handler's message is not redelivered to another consumer while its
        consumer keeps touching it (transports that redeliver after a timeout)."""
        async with self.transport() as transport:
            timeout = getattr(transport, "redelivery_timeout", None)
            if timeout is None:
                pytest.skip("this transport does not redeliver after a timeout")
            first = await self.subscribed(transport)
            second = Consumer(transport, [self.topic], self.group)
            try:
                await transport.publish(self.topic, message(self.topic, b"slow"))
                (received,) = await first.take()
                touch = received.touch  # type: ignore[attr-defined]
                deadline = asyncio.get_running_loop().time() + 2.5 * timeout
                while asyncio.get_running_loop().time() < deadline:
                    await touch()
                    await asyncio.sleep(timeout / 3)
                await second.nothing(timeout=0.1)
                await first.nothing(timeout=0.1)
                await received.ack()
            finally:
                await first.close()
                await second.close()

    async def test_a_nacked_message_comes_back_and_is_counted(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                await transport.publish(self.topic, message(self.topic, b"again"))
                (first,) = await consumer.take()
                await first.nack()
                (second,) = await consumer.take()
                assert second.body == b"again"
                if self.capabilities.counts_deliveries:
                    assert second.delivery_count == 2
                await second.ack()
                await consumer.nothing()
            finally:
                await consumer.close()

    async def test_a_message_nacked_without_requeue_is_gone(self) -> None:
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                await transport.publish(self.topic, message(self.topic, b"drop"))
                (received,) = await consumer.take()
                await received.nack(requeue=False)
                await consumer.nothing(timeout=self.redelivery_quiet())
            finally:
                await consumer.close()

    async def test_per_key_order_holds_for_one_consumer(self) -> None:
        if not self.capabilities.ordered_per_key:
            pytest.skip("this transport does not keep order")
        async with self.transport() as transport:
            consumer = await self.subscribed(transport)
            try:
                sent = [(f"k{i % 5}", f"{i}".encode()) for i in range(100)]
                for start in range(0, 100, 10):  # in several publishes, not one batch
                    await transport.publish(
                        self.topic,
                        *(message(self.topic, b, key=k) for k, b in sent[start : start + 10]),
                    )
                got = await consumer.take(100)
                by_key: dict[str, list[bytes]] = {}
                for key, body in sent:
                    by_key.setdefault(key, []).append(body)
                order = [r.body for r in got]
                for bodies in by_key.values():
                    assert [b for b in order if b in bodies] == bodies
                for received in got:
                    await received.ack()
            finally:
                await consumer.close()

    # -- nothing is lost silently --------------------------------------------------------

    async def test_a_message_for_a_topic_nobody_reads_yet_is_kept_or_refused(self) -> None:
        """Published before any group subscribed: the first group gets it, or publish
        raises (an unroutable message is never confirmed as sent)."""
        async with self.transport() as transport:
            try:
                await transport.publish(self.topic, message(self.topic, b"early"))
            except TransportError:
                return
            async with self.consumer(transport) as consumer:
                (received,) = await consumer.take()
                assert received.body == b"early"
                await received.ack()

    async def test_a_group_made_after_publishing_reads_the_earlier_messages(self) -> None:
        if not self.capabilities.new_groups_read_history:
            pytest.skip("a new group of this transport starts with what comes next")
        async with self.transport() as transport:
            await transport.publish(  # one key: in order on every transport
                self.topic, *(message(self.topic, f"m{i}".encode(), key="k") for i in range(5))
            )
            for group in (self.group, self.group + "-late"):
                async with self.consumer(transport, group=group) as consumer:
                    got = await consumer.take(5)
                    assert [r.body for r in got] == [f"m{i}".encode() for i in range(5)]
                    for received in got:
                        await received.ack()

    async def test_publish_after_close_raises(self) -> None:
        transport = await self.make()
        await transport.aclose()
        with pytest.raises(TransportError):
            await transport.publish(self.topic, message(self.topic, b"late"))

    async def test_publish_refuses_a_message_of_another_topic(self) -> None:
        async with self.transport() as transport:
            with pytest.raises(TransportError):
                await transport.publish(self.topic, message(self.other, b"mismatch"))

    async def test_subscribe_takes_a_sequence_of_topics(self) -> None:
        async with self.transport() as transport:
            for bad in ([], self.topic):
                iterator = transport.subscribe(bad, group=self.group)  # type: ignore[arg-type]
                with pytest.raises(ConfigurationError):
                    await iterator.__anext__()

    # -- secrets -------------------------------------------------------------------------

    def test_a_password_in_the_url_never_shows_in_its_repr(self) -> None:
        url = self.secret_url("canary-s3cr3t-pw", port=None)
        if url is None:
            pytest.skip("this transport's URLs carry no password")
        transport = self.transport_class.from_url(url)
        assert "canary-s3cr3t-pw" not in repr(transport)
        assert "canary-s3cr3t-pw" not in str(transport)

    async def test_a_password_in_the_url_never_shows_in_a_connection_error(self) -> None:
        url = self.secret_url("canary-s3cr3t-pw", port=1)  # nothing listens on port 1
        if url is None:
            pytest.skip("this transport's URLs carry no password")
        transport = self.transport_class.from_url(url)
        with pytest.raises(Exception) as caught:
            async with asyncio.timeout(WAIT):
                await transport.connect()
        chain: list[BaseException] = []
        error: BaseException | None = caught.value
        while error is not None and len(chain) < 10:
            chain.append(error)
            error = error.__cause__ or error.__context__
        for link in chain:
            assert "canary-s3cr3t-pw" not in str(link)
            assert "canary-s3cr3t-pw" not in repr(link)
        with contextlib.suppress(Exception):
            await transport.aclose()
