"""The read model: one row per order, as the customer's order page shows it.

Kept by after-commit handlers: they run once the transaction that published the event
has committed (never for a rolled-back one), off the publisher's stack. They are not
durable: a crash can lose an update. That is acceptable for a read model, which can be
rebuilt from the orders themselves; the steps that must not be lost are the saga's.

After-commit handlers run concurrently, so two updates of one order may arrive out of
order: a row keeps the id of the event it shows, and an older event (UUIDv7 ids sort by
time) never overwrites a newer one.
"""

from __future__ import annotations

from eventbus import Envelope, EventBus

from ..db import Database, Row
from ..inventory.events import StockReserved
from ..notifications.events import EmailSent
from ..payments.events import PaymentTaken
from .events import OrderCancelled, OrderConfirmed, OrderPlaced

__all__ = ["OrderOverview", "final_status", "order_pages"]

Followed = OrderPlaced | StockReserved | PaymentTaken | OrderConfirmed | OrderCancelled


def _status(event: Followed) -> str:
    if isinstance(event, OrderPlaced):
        return "placed: reserving stock"
    if isinstance(event, StockReserved):
        return "stock reserved: taking payment"
    if isinstance(event, PaymentTaken):
        return f"paid {event.amount}: confirming"
    if isinstance(event, OrderConfirmed):
        return "confirmed"
    return f"cancelled ({event.reason})"


def final_status(order: Row) -> str | None:
    """What the page of an order (a row of ``orders``) says once it has come to rest."""
    if order["state"] == "confirmed":
        return "confirmed"
    if order["state"] == "cancelled":
        return f"cancelled ({order['reason']})"
    return None


class OrderOverview:
    def __init__(self, bus: EventBus, db: Database) -> None:
        self._bus = bus
        self._db = db

    def subscribe(self) -> None:
        self._bus.subscribe(self.follow, name="orders.overview.follow", delivery="after_commit")
        self._bus.subscribe(self.emailed, name="orders.overview.emailed", delivery="after_commit")

    def follow(self, event: Followed, envelope: Envelope) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO order_overview (order_id) VALUES (:order_id) "
                "ON CONFLICT (order_id) DO NOTHING",
                order_id=event.order_id,
            )
            if isinstance(event, OrderPlaced):
                tx.execute(
                    "UPDATE order_overview SET customer = :customer, total = :total "
                    "WHERE order_id = :order_id",
                    order_id=event.order_id,
                    customer=event.customer,
                    total=str(event.total),
                )
            tx.execute(
                "UPDATE order_overview SET status = :status, last_event_id = :event_id "
                "WHERE order_id = :order_id "
                "AND (last_event_id IS NULL OR last_event_id < :event_id)",
                order_id=event.order_id,
                status=_status(event),
                event_id=str(envelope.id),
            )

    def emailed(self, event: EmailSent) -> None:
        with self._db.transaction() as tx:
            tx.execute(
                "UPDATE order_overview SET last_email = :subject WHERE order_id = :order_id",
                order_id=event.order_id,
                subject=event.subject,
            )


def order_pages(db: Database) -> list[Row]:
    """Every order's page, by order id."""
    with db.connect() as connection:
        return connection.fetch_all(
            "SELECT order_id, customer, total, status, last_email FROM order_overview "
            "ORDER BY order_id"
        )
