"""The facts the orders module publishes."""

from __future__ import annotations

from decimal import Decimal

import attrs

import eventbus


@attrs.frozen
class Line:
    sku: str
    quantity: int
    unit_price: Decimal


@eventbus.event("shop.order_placed")
class OrderPlaced:
    order_id: str
    customer: str
    lines: tuple[Line, ...]

    @property
    def total(self) -> Decimal:
        return sum((line.unit_price * line.quantity for line in self.lines), Decimal(0))


@eventbus.event("shop.order_confirmed")
class OrderConfirmed:
    order_id: str
    customer: str


@eventbus.event("shop.order_cancelled")
class OrderCancelled:
    order_id: str
    customer: str
    reason: str
