"""The notifications module: an outbox of messages to customers (printed here)."""

from __future__ import annotations

from eventbus import EventBus

from ..orders.events import OrderCancelled, OrderConfirmed


class Notifications:
    def __init__(self, bus: EventBus) -> None:
        self.sent: list[str] = []
        bus.subscribe(self.confirmed, name="notifications.confirmed")
        bus.subscribe(self.cancelled, name="notifications.cancelled")

    def confirmed(self, event: OrderConfirmed) -> None:
        self.sent.append(f"to {event.customer}: order {event.order_id} is confirmed")

    def cancelled(self, event: OrderCancelled) -> None:
        self.sent.append(
            f"to {event.customer}: order {event.order_id} was cancelled ({event.reason})"
        )
