"""What the outside world asks of the orders module."""

from __future__ import annotations

from collections.abc import Sequence

from eventbus import EventBus

from ..db import Database
from .events import OrderLine, OrderPlaced

__all__ = ["place_order"]


def place_order(
    bus: EventBus,
    db: Database,
    *,
    order_id: str,
    customer: str,
    lines: Sequence[OrderLine],
    payment_method: str,
) -> None:
    """Store the order and announce it, in one transaction.

    Inline subscribers of ``OrderPlaced`` run inside it: one that raises ``OrderRejectedError``
    makes this raise it, and nothing is stored or sent. Durable subscribers get the event
    through the outbox once the order is committed, even if this process dies right after.
    """
    placed = OrderPlaced(
        order_id=order_id, customer=customer, lines=tuple(lines), payment_method=payment_method
    )
    with db.transaction(bus) as tx:
        tx.execute(
            "INSERT INTO orders (order_id, customer, payment_method, total, state) "
            "VALUES (:order_id, :customer, :payment_method, :total, 'placed')",
            order_id=order_id,
            customer=customer,
            payment_method=payment_method,
            total=str(placed.total),
        )
        for line in placed.lines:
            tx.execute(
                "INSERT INTO order_lines (order_id, sku, quantity, unit_price) "
                "VALUES (:order_id, :sku, :quantity, :unit_price)",
                order_id=order_id,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=str(line.unit_price),
            )
        bus.publish(placed, key=order_id)
