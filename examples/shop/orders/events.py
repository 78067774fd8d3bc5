"""The facts the orders module publishes, and the refusal its inline subscribers may raise."""

from __future__ import annotations

from decimal import Decimal

import attrs

import eventbus

__all__ = [
    "OrderCancelled",
    "OrderConfirmed",
    "OrderLine",
    "OrderPlaced",
    "OrderRejectedError",
    "PaymentRequested",
]


@attrs.frozen
class OrderLine:
    sku: str
    quantity: int
    unit_price: Decimal


@eventbus.event("shop.order_placed")
class OrderPlaced:
    order_id: str
    customer: str
    """The customer's email address."""
    lines: tuple[OrderLine, ...]
    payment_method: str

    @property
    def total(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines), Decimal(0))


@eventbus.event("shop.payment_requested")
class PaymentRequested:
    """The saga asks for the money once the stock is held."""

    order_id: str
    customer: str
    amount: Decimal
    payment_method: str


@eventbus.event("shop.order_confirmed")
class OrderConfirmed:
    order_id: str
    customer: str


@eventbus.event("shop.order_cancelled")
class OrderCancelled:
    order_id: str
    customer: str
    reason: str


class OrderRejectedError(ValueError):
    """An inline subscriber of ``OrderPlaced`` refuses the order.

    Inline handlers run inside ``place_order``'s transaction: raising this reaches the
    caller of ``place_order`` and rolls the order back, outbox rows included.
    """
