"""eventbus.testing.capture_events: recording what a block of code published."""

import asyncio
import re

import pytest

from eventbus import Envelope, EventBus, EventRegistry, NotAnEventError, event
from eventbus.testing import CapturedEvents, capture_events

REGISTRY = EventRegistry()


@event("testing.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str
    total: int = 0


@event("testing.rush_order_placed", registry=REGISTRY)
class RushOrderPlaced(OrderPlaced):
    pass


@event("testing.receipt_sent", registry=REGISTRY)
class ReceiptSent:
    order_id: str


@event("testing.stock_reserved", registry=REGISTRY)
class StockReserved:
    order_id: str


@pytest.fixture
def bus() -> EventBus:
    bus = EventBus(registry=REGISTRY)

    @bus.subscribe
    def send_receipt(event: OrderPlaced) -> None:
        bus.publish(ReceiptSent(order_id=event.order_id))
        bus.publish(StockReserved(order_id=event.order_id))

    return bus


def test_capture_records_envelopes_in_publish_order_with_nested_publishes(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1", total=5))
        bus.publish(StockReserved(order_id="manual"))

    assert isinstance(captured, CapturedEvents)
    assert captured.events == [
        OrderPlaced(order_id="o-1", total=5),
        ReceiptSent(order_id="o-1"),
        StockReserved(order_id="o-1"),
        StockReserved(order_id="manual"),
    ]
    envelopes = captured.envelopes
    assert all(isinstance(env, Envelope) for env in envelopes)
    assert [env.event for env in envelopes] == captured.events
    assert [env.name for env in envelopes] == [
        "testing.order_placed",
        "testing.receipt_sent",
        "testing.stock_reserved",
        "testing.stock_reserved",
    ]
    root = envelopes[0]
    assert envelopes[1].causation_id == root.id
    assert envelopes[2].causation_id == root.id
    assert envelopes[3].causation_id is None
    assert len(captured) == 4
    assert list(captured) == envelopes


def test_capture_records_apublish_and_key_and_headers(bus):
    @bus.subscribe
    async def also_on_order(event: OrderPlaced) -> None:
        await asyncio.sleep(0)

    with capture_events(bus) as captured:
        asyncio.run(bus.apublish(OrderPlaced(order_id="o-2"), key="o-2", headers={"t": "1"}))

    assert [type(e) for e in captured.events] == [OrderPlaced, ReceiptSent, StockReserved]
    first = captured.envelopes[0]
    assert first.key == "o-2"
    assert dict(first.headers) == {"t": "1"}


def test_envelopes_is_a_copy(bus):
    with capture_events(bus) as captured:
        bus.publish(StockReserved(order_id="o-1"))
    captured.envelopes.clear()
    captured.events.clear()
    assert len(captured) == 1


def test_of_type_includes_subclasses(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.publish(RushOrderPlaced(order_id="o-2"))

    assert captured.of_type(OrderPlaced) == [
        OrderPlaced(order_id="o-1"),
        RushOrderPlaced(order_id="o-2"),
    ]
    assert captured.of_type(RushOrderPlaced) == [RushOrderPlaced(order_id="o-2")]
    assert captured.of_type(ReceiptSent) == [
        ReceiptSent(order_id="o-1"),
        ReceiptSent(order_id="o-2"),
    ]
    assert captured.of_type(int) == []


def test_envelopes_of(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.publish(RushOrderPlaced(order_id="o-2"))

    receipts = captured.envelopes_of(ReceiptSent)
    assert [env.event for env in receipts] == [
        ReceiptSent(order_id="o-1"),
        ReceiptSent(order_id="o-2"),
    ]
    assert all(env.name == "testing.receipt_sent" for env in receipts)
    assert [env.event.order_id for env in captured.envelopes_of(OrderPlaced)] == ["o-1", "o-2"]
    assert captured.envelopes_of(StockReserved)[0].causation_id == captured.envelopes[0].id


def test_assert_published_passes_and_returns_the_last_match(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1", total=5))
        bus.publish(OrderPlaced(order_id="o-2", total=5))

    assert captured.assert_published(OrderPlaced) == OrderPlaced(order_id="o-2", total=5)
    assert captured.assert_published(OrderPlaced, order_id="o-1") == OrderPlaced(
        order_id="o-1", total=5
    )
    assert captured.assert_published(OrderPlaced, total=5, times=2).order_id == "o-2"
    assert captured.assert_published(ReceiptSent, order_id="o-2", times=1) == ReceiptSent(
        order_id="o-2"
    )


def test_assert_published_fails_listing_what_was_published(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1", total=5))

    with pytest.raises(AssertionError) as caught:
        captured.assert_published(OrderPlaced, order_id="o-9")
    message = str(caught.value)
    assert message.startswith("no OrderPlaced(order_id='o-9') was published; published: ")
    assert repr(OrderPlaced(order_id="o-1", total=5)) in message
    assert repr(ReceiptSent(order_id="o-1")) in message
    assert repr(StockReserved(order_id="o-1")) in message

    with pytest.raises(AssertionError, match=r"no OrderPlaced\(nonexistent=1\) was published"):
        captured.assert_published(OrderPlaced, nonexistent=1)


def test_assert_published_with_nothing_published(bus):
    with capture_events(bus) as captured:
        pass
    with pytest.raises(AssertionError, match=r"no OrderPlaced was published; published: nothing"):
        captured.assert_published(OrderPlaced)


def test_assert_published_times_fails_on_another_count(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.publish(OrderPlaced(order_id="o-2"))

    with pytest.raises(
        AssertionError,
        match=re.escape("OrderPlaced was published 2 times, expected 1; published: "),
    ) as caught:
        captured.assert_published(OrderPlaced, times=1)
    assert repr(OrderPlaced(order_id="o-2")) in str(caught.value)

    with pytest.raises(
        AssertionError,
        match=re.escape("ReceiptSent(order_id='o-1') was published 1 times, expected 3"),
    ):
        captured.assert_published(ReceiptSent, order_id="o-1", times=3)


def test_assert_not_published(bus):
    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1"))

    captured.assert_not_published(RushOrderPlaced)
    captured.assert_not_published(OrderPlaced, order_id="o-2")
    captured.assert_not_published(ReceiptSent, order_id="o-2")

    with pytest.raises(AssertionError, match=r"ReceiptSent was published 1 times") as caught:
        captured.assert_not_published(ReceiptSent)
    assert repr(ReceiptSent(order_id="o-1")) in str(caught.value)
    with pytest.raises(
        AssertionError, match=re.escape("OrderPlaced(order_id='o-1') was published 1 times")
    ):
        captured.assert_not_published(OrderPlaced, order_id="o-1")


def test_clear_len_and_iter(bus):
    with capture_events(bus) as captured:
        assert len(captured) == 0
        assert list(captured) == []
        bus.publish(OrderPlaced(order_id="o-1"))
        assert len(captured) == 3
        assert [env.event for env in captured] == captured.events

        captured.clear()
        assert len(captured) == 0
        assert captured.events == []
        captured.assert_not_published(OrderPlaced)

        bus.publish(StockReserved(order_id="o-2"))
    assert captured.events == [StockReserved(order_id="o-2")]


def test_capture_stops_at_the_end_of_the_block(bus):
    with capture_events(bus) as captured:
        bus.publish(StockReserved(order_id="inside"))
    bus.publish(StockReserved(order_id="outside"))
    bus.publish(OrderPlaced(order_id="outside"))

    assert captured.events == [StockReserved(order_id="inside")]


def test_capture_stops_when_the_block_raises(bus):
    captures = []

    def publish_then_fail() -> None:
        with capture_events(bus) as captured:
            captures.append(captured)
            bus.publish(StockReserved(order_id="inside"))
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        publish_then_fail()
    bus.publish(StockReserved(order_id="outside"))
    [captured] = captures
    assert captured.events == [StockReserved(order_id="inside")]


def test_nested_captures_both_record(bus):
    with capture_events(bus) as outer:
        bus.publish(StockReserved(order_id="before"))
        with capture_events(bus) as inner:
            bus.publish(OrderPlaced(order_id="o-1"))
        bus.publish(StockReserved(order_id="after"))

    assert inner.events == [
        OrderPlaced(order_id="o-1"),
        ReceiptSent(order_id="o-1"),
        StockReserved(order_id="o-1"),
    ]
    assert outer.events == [
        StockReserved(order_id="before"),
        OrderPlaced(order_id="o-1"),
        ReceiptSent(order_id="o-1"),
        StockReserved(order_id="o-1"),
        StockReserved(order_id="after"),
    ]
    # Both saw the same publications.
    assert [env.id for env in inner.envelopes] == [env.id for env in outer.envelopes[1:4]]


def test_handlers_still_run_while_capturing(bus):
    seen = []

    @bus.subscribe
    def on_receipt(event: ReceiptSent) -> None:
        seen.append(event)

    with capture_events(bus) as captured:
        bus.publish(OrderPlaced(order_id="o-1"))

    assert seen == [ReceiptSent(order_id="o-1")]
    assert len(captured) == 3


def test_a_failing_handler_still_leaves_its_publish_captured(bus):
    @bus.subscribe
    def failing(event: StockReserved) -> None:
        raise RuntimeError("out of stock")

    with capture_events(bus) as captured:
        with pytest.raises(RuntimeError, match="out of stock"):
            bus.publish(OrderPlaced(order_id="o-1"))
        with pytest.raises(NotAnEventError):
            bus.publish(object())

    # The failure stopped the publish after StockReserved was announced.
    assert captured.events == [
        OrderPlaced(order_id="o-1"),
        ReceiptSent(order_id="o-1"),
        StockReserved(order_id="o-1"),
    ]


def test_a_capture_sees_only_its_own_bus(bus):
    other = EventBus(registry=REGISTRY)
    with capture_events(bus) as captured:
        other.publish(StockReserved(order_id="other"))
        bus.publish(StockReserved(order_id="mine"))
    assert captured.events == [StockReserved(order_id="mine")]


def test_assert_published_times_must_be_positive(bus):
    with capture_events(bus) as captured:
        pass
    for times in (0, -1, True):
        with pytest.raises(ValueError, match="assert_not_published"):
            captured.assert_published(OrderPlaced, times=times)
