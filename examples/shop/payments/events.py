"""The facts the payments module publishes."""

from __future__ import annotations

from decimal import Decimal

import eventbus


@eventbus.event("shop.payment_taken")
class PaymentTaken:
    order_id: str
    amount: Decimal


@eventbus.event("shop.payment_failed")
class PaymentFailed:
    order_id: str
    reason: str
