"""The inventory module's handlers: one inline check, two durable steps."""

from __future__ import annotations

from eventbus import EventBus

from ..db import Connection, Database
from ..orders.events import OrderCancelled, OrderPlaced, OrderRejectedError
from .events import OutOfStock, StockReleased, StockReserved

__all__ = ["Inventory"]


class _Short(Exception):  # noqa: N818 - control flow inside reserve_stock, never escapes
    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(sku)
        self.sku, self.wanted, self.available = sku, wanted, available


class Inventory:
    def __init__(self, bus: EventBus, db: Database) -> None:
        self._bus = bus
        self._db = db

    def subscribe(self) -> None:
        bus = self._bus
        # Inline: runs inside place_order's transaction, before anything is committed.
        bus.subscribe(self.check_products, name="inventory.check_products")
        bus.subscribe(self.reserve_stock, name="inventory.reserve_stock", delivery="durable")
        bus.subscribe(self.release_stock, name="inventory.release_stock", delivery="durable")

    def check_products(self, event: OrderPlaced) -> None:
        """Refuse, at once and to the caller's face, an order for what the shop does not sell.

        Only a quick read: whether the stock suffices is the durable step's business, as
        it may change before the order's turn comes.
        """
        skus = {line.sku for line in event.lines}
        if not skus:
            raise OrderRejectedError(f"order {event.order_id} has no lines")
        with self._db.connect() as connection:
            known = {row["sku"] for row in connection.fetch_all("SELECT sku FROM products")}
        unknown = sorted(skus - known)
        if unknown:
            raise OrderRejectedError(
                f"order {event.order_id}: we do not sell {', '.join(unknown)}; "
                f"the catalogue has {', '.join(sorted(known))}"
            )
        if any(line.quantity <= 0 for line in event.lines):
            raise OrderRejectedError(f"order {event.order_id}: quantities must be at least 1")

    def reserve_stock(self, event: OrderPlaced) -> None:
        """Hold every line's stock, or none of it."""
        with self._db.transaction(self._bus) as tx:
            # At least once: the reservation's key says whether this order was seen.
            # A redelivery finds it and stops; the first delivery's event was committed
            # with it. (INSERT ... ON CONFLICT DO NOTHING: SQLite and PostgreSQL alike.)
            if not tx.execute(
                "INSERT INTO reservations (order_id, state) VALUES (:order_id, 'held') "
                "ON CONFLICT (order_id) DO NOTHING",
                order_id=event.order_id,
            ):
                return
            try:
                # Nested on the same connection, bus.transaction() is a savepoint: a line
                # short of stock undoes the lines taken before it, not the reservation row.
                with self._bus.transaction(tx.driver_connection):
                    for line in event.lines:
                        _take(tx, event.order_id, line.sku, line.quantity)
            except _Short as short:
                tx.execute(
                    "UPDATE reservations SET state = 'refused' WHERE order_id = :order_id",
                    order_id=event.order_id,
                )
                self._bus.publish(
                    OutOfStock(
                        order_id=event.order_id,
                        sku=short.sku,
                        wanted=short.wanted,
                        available=short.available,
                    ),
                    key=event.order_id,
                )
            else:
                self._bus.publish(StockReserved(order_id=event.order_id), key=event.order_id)

    def release_stock(self, event: OrderCancelled) -> None:
        """The saga's compensation: give back what a cancelled order held."""
        with self._db.transaction(self._bus) as tx:
            # Idempotent by state: only a held reservation is released, once.
            if not tx.execute(
                "UPDATE reservations SET state = 'released' "
                "WHERE order_id = :order_id AND state = 'held'",
                order_id=event.order_id,
            ):
                return  # nothing held (out of stock), or released before
            for line in tx.fetch_all(
                "SELECT sku, quantity FROM reserved_lines WHERE order_id = :order_id",
                order_id=event.order_id,
            ):
                tx.execute(
                    "UPDATE products SET on_hand = on_hand + :quantity WHERE sku = :sku",
                    sku=line["sku"],
                    quantity=line["quantity"],
                )
            self._bus.publish(StockReleased(order_id=event.order_id), key=event.order_id)


def _take(tx: Connection, order_id: str, sku: str, quantity: int) -> None:
    # A conditional UPDATE: two orders racing for the last item cannot both get it,
    # on PostgreSQL (row lock) as on SQLite (one writer).
    if not tx.execute(
        "UPDATE products SET on_hand = on_hand - :quantity "
        "WHERE sku = :sku AND on_hand >= :quantity",
        sku=sku,
        quantity=quantity,
    ):
        row = tx.fetch_one("SELECT on_hand FROM products WHERE sku = :sku", sku=sku)
        raise _Short(sku, quantity, 0 if row is None else int(row["on_hand"]))
    tx.execute(
        "INSERT INTO reserved_lines (order_id, sku, quantity) VALUES (:order_id, :sku, :quantity)",
        order_id=order_id,
        sku=sku,
        quantity=quantity,
    )
