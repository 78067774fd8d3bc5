"""A hook receiver connected to one bus, then disconnected from that bus.

The hooks' docstring shows ``hooks.event_published.connect(receiver, sender=bus)`` for one
bus. Disconnecting it the same way, ``disconnect(receiver, sender=bus)``, takes it out of
the bus's bucket, but blinker keeps it in ``signal.receivers``, which is what
``hooks._publish_observed()`` reads: every bus of the process then goes on building
envelopes and tracking causes for a receiver that will never be called. Found by the shop
example (examples/shop/flow.py); ``eventbus.hooks`` now drops a receiver disconnected from
its last sender.
"""

from __future__ import annotations

import weakref

import pytest

from eventbus import EventBus, EventRegistry, _bus, event, hooks

REGISTRY = EventRegistry()


@event("hooksender.a", registry=REGISTRY)
class A:
    pass


def _receiver(sender: object, **kwargs: object) -> None:
    pass


@pytest.fixture
def only_this_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    """No other bus of the process makes this one track causes (a long-lived bus of
    another test's, such as the Django test project's, would)."""
    monkeypatch.setattr(_bus, "_buses", weakref.WeakSet())


@pytest.mark.usefixtures("only_this_bus")
def test_a_receiver_disconnected_from_its_bus_costs_the_buses_nothing_more() -> None:
    bus = EventBus(registry=REGISTRY)
    bus.subscribe(A, name="a")(lambda event: None)
    hooks.event_published.connect(_receiver, sender=bus)
    try:
        bus.publish(A())
        assert bus._routes[A][1] != 0  # observed: the publish builds an envelope
        hooks.event_published.disconnect(_receiver, sender=bus)
        bus.publish(A())
        assert bus._routes[A][1] == 0, "the bus still pays for a receiver it never calls"
    finally:
        hooks.event_published.disconnect(_receiver)
        bus.close()
