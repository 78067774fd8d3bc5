"""The order's saga: from placed to confirmed, or to cancelled with compensation.

    OrderPlaced        inventory reserves the stock:  StockReserved | OutOfStock
    StockReserved      request_payment:               PaymentRequested
    PaymentRequested   payments charges the card:     PaymentTaken | PaymentFailed
    PaymentTaken       confirm:                       OrderConfirmed
    OutOfStock,
    PaymentFailed      cancel:                        OrderCancelled
    OrderCancelled     inventory releases what the order held (the compensation)

Every step is a durable handler: delivered at least once through the outbox, so each one
is idempotent on its own key. A step moves the order from the state it expects with a
conditional UPDATE; a redelivered event finds the order moved on, changes nothing and
publishes nothing (its first delivery's events committed with that first UPDATE).
"""

from __future__ import annotations

from decimal import Decimal

from eventbus import EventBus

from ..db import Connection, Database
from ..inventory.events import OutOfStock, StockReserved
from ..payments.events import PaymentFailed, PaymentTaken
from .events import OrderCancelled, OrderConfirmed, PaymentRequested

__all__ = ["OrderSaga"]


class OrderSaga:
    def __init__(self, bus: EventBus, db: Database) -> None:
        self._bus = bus
        self._db = db

    def subscribe(self) -> None:
        bus = self._bus
        bus.subscribe(self.request_payment, name="orders.request_payment", delivery="durable")
        bus.subscribe(self.confirm, name="orders.confirm", delivery="durable")
        bus.subscribe(self.cancel, name="orders.cancel", delivery="durable")

    def request_payment(self, event: StockReserved) -> None:
        with self._db.transaction(self._bus) as tx:
            if not _move(tx, event.order_id, "placed", "awaiting_payment"):
                return  # delivered before: the payment was requested then
            order = tx.fetch_one(
                "SELECT customer, total, payment_method FROM orders WHERE order_id = :order_id",
                order_id=event.order_id,
            )
            assert order is not None
            self._bus.publish(
                PaymentRequested(
                    order_id=event.order_id,
                    customer=order["customer"],
                    amount=Decimal(order["total"]),
                    payment_method=order["payment_method"],
                ),
                key=event.order_id,
            )

    def confirm(self, event: PaymentTaken) -> None:
        with self._db.transaction(self._bus) as tx:
            if not _move(tx, event.order_id, "awaiting_payment", "confirmed"):
                return
            customer = _customer(tx, event.order_id)
            self._bus.publish(
                OrderConfirmed(order_id=event.order_id, customer=customer), key=event.order_id
            )

    def cancel(self, event: OutOfStock | PaymentFailed) -> None:
        if isinstance(event, OutOfStock):
            reason = f"out of stock: {event.sku} (wanted {event.wanted}, {event.available} left)"
        else:
            reason = f"payment declined: {event.reason}"
        with self._db.transaction(self._bus) as tx:
            moved = tx.execute(
                "UPDATE orders SET state = 'cancelled', reason = :reason "
                "WHERE order_id = :order_id AND state IN ('placed', 'awaiting_payment')",
                order_id=event.order_id,
                reason=reason,
            )
            if not moved:
                return
            customer = _customer(tx, event.order_id)
            # Inventory releases what it held for the order when it hears this: the
            # compensation of the reservation, by event rather than by a call.
            self._bus.publish(
                OrderCancelled(order_id=event.order_id, customer=customer, reason=reason),
                key=event.order_id,
            )


def _move(tx: Connection, order_id: str, from_state: str, to_state: str) -> bool:
    """Move the order on if it is where this step expects it; False if it is not."""
    moved = tx.execute(
        "UPDATE orders SET state = :to_state WHERE order_id = :order_id AND state = :from_state",
        order_id=order_id,
        from_state=from_state,
        to_state=to_state,
    )
    return moved == 1


def _customer(tx: Connection, order_id: str) -> str:
    order = tx.fetch_one(
        "SELECT customer FROM orders WHERE order_id = :order_id", order_id=order_id
    )
    assert order is not None
    return str(order["customer"])
