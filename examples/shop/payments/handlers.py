"""The payments module's handler: charge the card when asked, tell how it went."""

from __future__ import annotations

from eventbus import EventBus

from ..db import Database
from ..orders.events import PaymentRequested
from .events import PaymentFailed, PaymentTaken
from .gateway import CardGateway

__all__ = ["Payments"]


class Payments:
    def __init__(self, bus: EventBus, db: Database, gateway: CardGateway) -> None:
        self._bus = bus
        self._db = db
        self._gateway = gateway

    def subscribe(self) -> None:
        self._bus.subscribe(self.take_payment, name="payments.take_payment", delivery="durable")

    def take_payment(self, event: PaymentRequested) -> None:
        with self._db.transaction(self._bus) as tx:
            # At least once: the payment row's key (the order id) tells a redelivery
            # apart; it changes nothing then. The gateway dedups on the same key, for the
            # case where the charge went through and this transaction did not commit.
            if not tx.execute(
                "INSERT INTO payments (order_id, amount, state) "
                "VALUES (:order_id, :amount, 'pending') ON CONFLICT (order_id) DO NOTHING",
                order_id=event.order_id,
                amount=str(event.amount),
            ):
                return
            charge = self._gateway.charge(
                card=event.payment_method, amount=event.amount, idempotency_key=event.order_id
            )
            if charge.approved:
                tx.execute(
                    "UPDATE payments SET state = 'captured', reference = :reference "
                    "WHERE order_id = :order_id",
                    order_id=event.order_id,
                    reference=charge.reference,
                )
                self._bus.publish(
                    PaymentTaken(
                        order_id=event.order_id, amount=event.amount, reference=charge.reference
                    ),
                    key=event.order_id,
                )
            else:
                tx.execute(
                    "UPDATE payments SET state = 'declined', reason = :reason "
                    "WHERE order_id = :order_id",
                    order_id=event.order_id,
                    reason=charge.decline_reason,
                )
                self._bus.publish(
                    PaymentFailed(order_id=event.order_id, reason=charge.decline_reason),
                    key=event.order_id,
                )
