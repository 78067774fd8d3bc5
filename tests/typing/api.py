"""Checked by mypy --strict only, never run: the public API keeps its types.

Each ``assert_type`` fails the type check if a signature loses precision. Each
``# type: ignore[code]`` marks a line that must stay an error: ``--strict`` turns on
``warn_unused_ignores``, so a line the checker starts to accept fails the check too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any, assert_type

import attrs

import eventbus
from eventbus import Envelope, EventBus, Handler, JSONCodec, hooks
from eventbus.testing import CapturedEvents, capture_events
from eventbus.typing import EventInstance

registry = eventbus.EventRegistry()


@eventbus.event("typing.order_placed", version=2, registry=registry)
class OrderPlaced:
    order_id: str
    quantity: int = 1


@eventbus.event("typing.order_cancelled", registry=registry)
class OrderCancelled:
    order_id: str


# dataclass_transform: the constructor is keyword-only and checked.
placed = OrderPlaced(order_id="o-1", quantity=2)
assert_type(placed.order_id, str)
OrderPlaced("o-1")  # type: ignore[call-arg]
OrderPlaced(order_id=1)  # type: ignore[arg-type]
placed.order_id = "x"  # type: ignore[misc]

bus = EventBus(registry=registry)


@bus.subscribe
def on_placed(event: OrderPlaced) -> None: ...


# The decorators return the handler unchanged: its parameters are still checked.
assert_type(on_placed(placed), None)
on_placed("o-1")  # type: ignore[arg-type]


@bus.subscribe(OrderCancelled, name="orders.audit", delivery="inline")
def audit(event: OrderCancelled, envelope: Envelope) -> None: ...


envelope: Envelope = eventbus.JSONCodec(registry).decode(b"{}")
assert_type(audit(OrderCancelled(order_id="o-1"), envelope), None)
audit(OrderCancelled(order_id="o-1"))  # type: ignore[call-arg]


@bus.subscribe(name="orders.notify")
async def notify(event: OrderPlaced | OrderCancelled) -> None: ...


asyncio.run(assert_type(notify(placed), Coroutine[Any, Any, None]))

bus.subscribe(OrderPlaced, delivery="sometimes")  # type: ignore[call-overload]


def direct(event: OrderPlaced) -> int:
    return 1


assert_type(bus.subscribe(direct, name="direct")(placed), int)

assert_type(bus.publish(placed), None)
assert_type(bus.publish(placed, key="o-1", headers={"tenant": "t1"}), None)
bus.publish(placed, "o-1")  # type: ignore[call-arg]
assert_type(asyncio.run(bus.apublish(placed)), None)
asyncio.run(bus.apublish(placed, key="o-1"))


# publish takes events only: the type check refuses what run time would refuse anyway.
@attrs.frozen
class StockReserved:  # a frozen attrs class, registered as it is
    sku: str


@dataclasses.dataclass(frozen=True)
class StockReleased:  # a frozen dataclass, registered as it is
    sku: str


eventbus.event("typing.stock_reserved", registry=registry)(StockReserved)
eventbus.event("typing.stock_released", registry=registry)(StockReleased)


@eventbus.event("typing.order_placed_again", registry=registry)
class OrderPlacedAgain(OrderPlaced):  # a subclass of an event, declared itself
    pass


bus.publish(StockReserved(sku="s-1"))
bus.publish(StockReleased(sku="s-1"))
bus.publish(OrderPlacedAgain(order_id="o-1"))
asyncio.run(bus.apublish(StockReleased(sku="s-1")))


def forward(event: EventInstance) -> None:  # the name for code that passes events on
    bus.publish(event, key="k")


forward(placed)
forward(StockReserved(sku="s-1"))
either: OrderPlaced | StockReleased = placed
bus.publish(either)


class NotAnEvent:
    order_id: str = "o-1"


bus.publish(object())  # type: ignore[arg-type]
bus.publish({"order_id": "o-1"})  # type: ignore[arg-type]
bus.publish("typing.order_placed")  # type: ignore[arg-type]
bus.publish(None)  # type: ignore[arg-type]
bus.publish(NotAnEvent())  # type: ignore[arg-type]
bus.publish(OrderPlaced)  # type: ignore[arg-type]  # the class, not an instance
asyncio.run(bus.apublish(object()))  # type: ignore[arg-type]
asyncio.run(bus.apublish({"order_id": "o-1"}))  # type: ignore[arg-type]
forward(object())  # type: ignore[arg-type]
assert_type(bus.handlers_for(OrderPlaced), tuple[Handler, ...])
assert_type(bus.handlers, tuple[Handler, ...])

with capture_events(bus) as captured:
    assert_type(captured, CapturedEvents)
    assert_type(captured.of_type(OrderPlaced), list[OrderPlaced])
    assert_type(captured.assert_published(OrderPlaced, order_id="o-1"), OrderPlaced)
    assert_type(captured.envelopes, list[Envelope])

codec = JSONCodec(registry)
data = codec.encode(captured.envelopes[0])
assert_type(data, bytes)
assert_type(codec.decode(data), Envelope)
tolerant = JSONCodec(registry, tolerant=True, max_size=65_536)
assert_type(tolerant.tolerant, bool)
EventBus(registry=registry, codec=tolerant)
JSONCodec(registry, tolerant="yes")  # type: ignore[arg-type]
assert_type(eventbus.uuid7().version, int | None)


@hooks.event_published.connect
def seen(sender: EventBus, **kwargs: Any) -> None: ...


info = registry.info(OrderPlaced)
assert_type(info.name, str)
assert_type(info.version, int)

# Masking secrets is public: stores, transports and applications use the same.
assert_type(eventbus.redact("postgresql://app:pw@db/app"), str)
assert_type(eventbus.describe_error(ValueError("x")), str)
assert_type(eventbus.RedactingFilter().filter(logging.makeLogRecord({})), bool)
