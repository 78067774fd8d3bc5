"""Durable delivery through a transport, as a user sees it: the bus, the relay, the worker.

The same handlers run whatever the transport; a backend subclasses ``BusOverTransport``
in its ``tests/transports/test_<name>.py`` and provides ``make_transport`` (a fresh
namespace per test). Every test publishes through a real SQLite outbox in a business
transaction, so the relay forwards rows to the broker and the worker consumes them:
envelope fields round-trip, rollback publishes nothing, duplicates are handled once
(inbox), a failing handler is dead-lettered without repeating the others, garbage from
the broker is dead-lettered once while the worker goes on, a message that keeps killing
its consumer is dead-lettered past ``max_deliveries``, and each key keeps its order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import tenacity

from eventbus import (
    Envelope,
    EventBus,
    EventRegistry,
    MessageRejectedError,
    RetryPolicy,
    SQLiteOutbox,
    event,
)
from eventbus.testing import capture_events
from eventbus.transports import Capabilities, Message
from eventbus.typing import OutboxStore, Transport
from tests.servers import BrokerNamespace, broker_namespace, fresh_name

REGISTRY = EventRegistry()
WAIT = 30.0


@event("shop.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str
    amount: int = 0


@event("shop.order_cancelled", registry=REGISTRY)
class OrderCancelled:
    order_id: str


class BoomError(Exception):
    pass


FAST = RetryPolicy(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())


async def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``check()`` holds: deliveries through a broker arrive when they arrive."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


class BusOverTransport:
    """What durable delivery promises on every transport."""

    transport_class: ClassVar[type[Transport]]

    def capabilities(self) -> Capabilities:
        """What the transport can do (its class's; a subclass may resolve it lazily)."""
        return self.transport_class.capabilities

    async def make_transport(self) -> Transport:
        """A transport (not connected) in the namespace ``self.namespace``: the buses of
        one test share it (two buses in one test talk through it), tests do not."""
        raise NotImplementedError

    space: BrokerNamespace
    broker: ClassVar[str | None] = None
    """The broker (``redis``, ``rabbitmq``, ``nats``) whose namespace ``self.space`` the
    test gets, removed from it at teardown; None for a transport with no server."""

    @pytest.fixture(autouse=True)
    def _paths(self, tmp_path: Path) -> Iterator[None]:
        self.database = tmp_path / "app.db"
        self.group = f"g{uuid.uuid4().hex[:10]}"
        if self.broker is None:
            self.namespace = fresh_name()
            yield
            return
        with broker_namespace(self.broker) as self.space:
            self.namespace = self.space.name
            self.space.keep_group(self.group)
            yield

    def make_outbox(self) -> OutboxStore:
        """The outbox of the test's buses, on ``self.database`` (a SQLite file)."""
        return SQLiteOutbox(self.database, poll_interval=0.05)

    @contextlib.asynccontextmanager
    async def bus(self, **options: Any) -> AsyncIterator[EventBus]:
        outbox = self.make_outbox()
        options.setdefault("retry", FAST)
        bus = EventBus(
            registry=REGISTRY,
            outbox=outbox,
            transport=await self.make_transport(),
            group=self.group,
            **options,
        )
        try:
            yield bus
        finally:
            await bus.aclose()
            outbox.close()

    def connection(self) -> sqlite3.Connection:
        return sqlite3.connect(self.database, isolation_level=None)

    async def publish(self, bus: EventBus, *events: Any, key: str | None = None) -> None:
        connection = self.connection()
        try:
            with bus.transaction(connection):
                for each in events:
                    bus.publish(each, key=key, headers={"tenant": "t-1"})
        finally:
            connection.close()

    # -- the round trip ------------------------------------------------------------------

    async def test_a_committed_event_reaches_its_handler_with_every_envelope_field(self) -> None:
        seen: list[Envelope] = []
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced, envelope: Envelope) -> None:
                seen.append(envelope)

            await bus.astart()
            with capture_events(bus) as captured:
                await self.publish(bus, OrderPlaced(order_id="o-1", amount=990), key="o-1")
            sent = list(captured.envelopes)
            await eventually(lambda: len(seen) == 1)
            (got,) = seen
            (original,) = sent
            assert got.event == OrderPlaced(order_id="o-1", amount=990)
            for field in ("id", "name", "version", "key", "correlation_id", "causation_id"):
                assert getattr(got, field) == getattr(original, field), field
            assert got.occurred_at == original.occurred_at
            assert got.occurred_at.tzinfo is not None
            assert dict(got.headers) == {"tenant": "t-1"}
            assert bus.outbox is not None
            await eventually(lambda: bus.outbox is not None and bus.outbox.status().pending == 0)

    async def test_a_rolled_back_transaction_sends_nothing(self) -> None:
        seen: list[str] = []
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                seen.append(event.order_id)

            await bus.astart()
            connection = self.connection()

            def roll_back() -> None:
                with bus.transaction(connection):
                    bus.publish(OrderPlaced(order_id="rolled-back"))
                    raise BoomError

            with pytest.raises(BoomError):
                roll_back()
            connection.close()
            await self.publish(bus, OrderPlaced(order_id="committed"))
            await eventually(lambda: seen == ["committed"])
            await asyncio.sleep(0.3)
            assert seen == ["committed"]

    async def test_every_durable_handler_of_the_event_and_its_bases_runs_once(self) -> None:
        runs: collections.Counter[str] = collections.Counter()
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                runs["charge"] += 1

            @bus.subscribe(delivery="durable", name="audit.everything")
            def audit(event: object) -> None:
                runs["audit"] += 1

            @bus.subscribe(delivery="durable", name="stock.release")
            async def release(event: OrderCancelled) -> None:
                runs["release"] += 1

            await bus.astart()
            await self.publish(bus, OrderPlaced(order_id="o-1"), OrderCancelled(order_id="o-1"))
            await eventually(lambda: sum(runs.values()) == 4)
            await asyncio.sleep(0.3)
            assert runs == {"charge": 1, "audit": 2, "release": 1}

    # -- duplicates and failures ---------------------------------------------------------

    async def test_a_message_delivered_twice_is_handled_once_per_handler(self) -> None:
        runs: collections.Counter[str] = collections.Counter()
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                runs[event.order_id] += 1

            await bus.astart()
            with capture_events(bus) as captured:
                await self.publish(bus, OrderPlaced(order_id="o-1"))
            await eventually(lambda: runs["o-1"] == 1)
            # The broker delivers the same envelope again (a publish retried after a lost
            # confirm, a consumer that died before its ack): the inbox recognises it.
            (envelope,) = captured.envelopes
            body = bus.codec.encode(envelope)
            transport = bus.transport
            assert transport is not None
            message = Message(envelope.id, envelope.name, envelope.key, body)
            await transport.publish(envelope.name, message)
            await transport.publish(envelope.name, message)
            await self.publish(bus, OrderPlaced(order_id="o-2"))
            await eventually(lambda: runs["o-2"] == 1)
            await asyncio.sleep(0.3)
            assert runs == {"o-1": 1, "o-2": 1}

    async def test_a_failing_handler_is_dead_lettered_and_the_others_run_once(self) -> None:
        runs: collections.Counter[str] = collections.Counter()
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                runs["charge"] += 1

            @bus.subscribe(delivery="durable", name="mail.receipt")
            def receipt(event: OrderPlaced) -> None:
                runs["receipt"] += 1
                raise BoomError("mail server down")

            await bus.astart()
            await self.publish(bus, OrderPlaced(order_id="o-1"))
            await eventually(lambda: bus.dead_letters.count() == 1)
            await asyncio.sleep(0.5)
            assert runs == {"charge": 1, "receipt": 2}  # FAST: two attempts
            (letter,) = bus.dead_letters.list()
            assert letter.handler == "mail.receipt"
            assert "mail server down" in letter.message
            assert bus.codec.decode(letter.payload).event == OrderPlaced(order_id="o-1")

    async def test_garbage_from_the_broker_is_dead_lettered_once_and_the_worker_goes_on(
        self,
    ) -> None:
        seen: list[str] = []
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                seen.append(event.order_id)

            await bus.astart()
            await self.publish(bus, OrderPlaced(order_id="first"))
            await eventually(lambda: seen == ["first"])
            transport = bus.transport
            assert transport is not None
            topic = "shop.order_placed"
            garbage = [
                b"not json at all",
                b'{"id": "x", "name": "shop.unknown_event"}',
                pickle.dumps({"order_id": "evil"}),
                b"[" * 100_000,
                b'{"n": ' + b"9" * 5000 + b"}",
                b"x" * (2 * 1024 * 1024),
            ]
            refused = 0
            for body in garbage:
                try:
                    await transport.publish(topic, Message(uuid.uuid4(), topic, None, body))
                except MessageRejectedError:
                    refused += 1  # over this broker's own limit: it never gets in
            assert refused <= 1
            await self.publish(bus, OrderPlaced(order_id="after"))
            await eventually(lambda: seen == ["first", "after"])
            await eventually(lambda: bus.dead_letters.count() == len(garbage) - refused)
            await asyncio.sleep(0.5)
            letters = bus.dead_letters.list()
            assert len(letters) == len(garbage) - refused
            assert {letter.handler for letter in letters} == {"@worker"}
            assert all(len(letter.payload) <= 1024 * 1024 for letter in letters)

    async def test_a_message_that_keeps_killing_its_consumer_is_dead_lettered(self) -> None:
        if not self.capabilities().counts_deliveries:
            pytest.skip("this transport does not count deliveries")
        topic = "shop.order_placed"
        async with self.bus(max_deliveries=2, worker=False) as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def not_here(event: OrderPlaced) -> None:
                pytest.fail("this process runs no worker")

            await bus.astart()
            transport = bus.transport
            assert transport is not None
            await transport.connect()
            consumer = transport.subscribe([topic], group=self.group)  # the group exists
            await self.publish(bus, OrderPlaced(order_id="poison"))
            async with asyncio.timeout(WAIT):
                await consumer.__anext__()
            await consumer.aclose()  # type: ignore[attr-defined] # died before its ack
            await self.take_and_die(transport, topic)
        seen: list[str] = []
        async with self.bus(max_deliveries=2) as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            def charge(event: OrderPlaced) -> None:
                seen.append(event.order_id)

            await bus.astart()
            await eventually(lambda: bus.dead_letters.count() == 1)
            (letter,) = bus.dead_letters.list()
            assert "max_deliveries=2" in letter.message
            assert seen == []

    async def take_and_die(self, transport: Transport, topic: str) -> None:
        iterator = transport.subscribe([topic], group=self.group)
        async with asyncio.timeout(WAIT):
            await iterator.__anext__()
        await iterator.aclose()  # type: ignore[attr-defined]

    # -- order -----------------------------------------------------------------------------

    async def test_each_key_reaches_the_handler_in_publish_order(self) -> None:
        if not self.capabilities().ordered_per_key:
            pytest.skip("this transport does not keep order")
        got: dict[str, list[int]] = collections.defaultdict(list)
        async with self.bus() as bus:

            @bus.subscribe(delivery="durable", name="billing.charge")
            async def charge(event: OrderPlaced) -> None:
                await asyncio.sleep(0.001 * (hash(event.order_id) % 3))
                key, number = event.order_id.split(":")
                got[key].append(int(number))

            await bus.astart()
            for number in range(20):
                for key in ("a", "b", "c", "d", "e"):
                    await self.publish(bus, OrderPlaced(order_id=f"{key}:{number}"), key=key)
            await eventually(lambda: sum(map(len, got.values())) == 100)
            assert all(numbers == list(range(20)) for numbers in got.values()), got
