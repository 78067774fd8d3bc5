"""The payments module: a card gateway stand-in that declines one customer."""

from __future__ import annotations

from decimal import Decimal

from eventbus import EventBus

from ..inventory.events import StockReserved
from ..orders.events import OrderPlaced
from .events import PaymentFailed, PaymentTaken


class Payments:
    def __init__(self, bus: EventBus, declined_customers: set[str]) -> None:
        self.bus = bus
        self.declined = set(declined_customers)
        self.pending: dict[str, tuple[str, Decimal]] = {}
        self.taken: dict[str, Decimal] = {}
        bus.subscribe(self.remember_amount, name="payments.remember_amount")
        bus.subscribe(self.charge, name="payments.charge")

    def remember_amount(self, event: OrderPlaced) -> None:
        self.pending[event.order_id] = (event.customer, event.total)

    def charge(self, event: StockReserved) -> None:
        customer, amount = self.pending.pop(event.order_id)
        if customer in self.declined:
            self.bus.publish(PaymentFailed(order_id=event.order_id, reason="card declined"))
            return
        self.taken[event.order_id] = amount
        self.bus.publish(PaymentTaken(order_id=event.order_id, amount=amount))
