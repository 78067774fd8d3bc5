"""The facts the payments module publishes."""

from __future__ import annotations

from decimal import Decimal

import eventbus

__all__ = ["PaymentFailed", "PaymentTaken"]


@eventbus.event("shop.payment_taken")
class PaymentTaken:
    order_id: str
    amount: Decimal
    reference: str


@eventbus.event("shop.payment_failed")
class PaymentFailed:
    order_id: str
    reason: str
