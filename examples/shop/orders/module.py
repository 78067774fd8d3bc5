"""The orders module: its state, its command, its handlers."""

from __future__ import annotations

from eventbus import EventBus

from ..inventory.events import OutOfStock
from ..payments.events import PaymentFailed, PaymentTaken
from .events import Line, OrderCancelled, OrderConfirmed, OrderPlaced


class InvalidOrderError(ValueError):
    """An order that must not be placed; raised inline, so it reaches the caller."""


class Orders:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.states: dict[str, str] = {}
        self.customers: dict[str, str] = {}
        bus.subscribe(self.validate, name="orders.validate")
        bus.subscribe(self.confirm_when_paid, name="orders.confirm_when_paid")
        bus.subscribe(self.cancel_on_failure, name="orders.cancel_on_failure")

    def place(self, order_id: str, customer: str, lines: list[Line]) -> None:
        """The command: record the order, then announce it."""
        self.states[order_id] = "placed"
        self.customers[order_id] = customer
        self.bus.publish(
            OrderPlaced(order_id=order_id, customer=customer, lines=tuple(lines)), key=order_id
        )

    def validate(self, event: OrderPlaced) -> None:
        # Subscribed first, so it runs before the other modules see the order.
        if not event.lines or any(line.quantity <= 0 for line in event.lines):
            self.states[event.order_id] = "rejected"
            raise InvalidOrderError(f"order {event.order_id} has no valid lines")

    def confirm_when_paid(self, event: PaymentTaken) -> None:
        self.states[event.order_id] = "confirmed"
        customer = self.customers[event.order_id]
        self.bus.publish(OrderConfirmed(order_id=event.order_id, customer=customer))

    def cancel_on_failure(self, event: PaymentFailed | OutOfStock) -> None:
        reason = "payment declined" if isinstance(event, PaymentFailed) else "out of stock"
        self.states[event.order_id] = "cancelled"
        customer = self.customers[event.order_id]
        self.bus.publish(OrderCancelled(order_id=event.order_id, customer=customer, reason=reason))
