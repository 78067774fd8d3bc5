"""The inventory module's commands and queries on its stock."""

from __future__ import annotations

from ..db import Database, Row

__all__ = ["holding", "receive", "stock_levels"]


def receive(db: Database, sku: str, name: str, quantity: int) -> None:
    """Goods in: add ``quantity`` of ``sku`` to the shelves (a new product if need be)."""
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO products (sku, name, on_hand, received) "
            "VALUES (:sku, :name, :quantity, :quantity) "
            "ON CONFLICT (sku) DO UPDATE SET on_hand = products.on_hand + excluded.on_hand, "
            "received = products.received + excluded.received",
            sku=sku,
            name=name,
            quantity=quantity,
        )


def stock_levels(db: Database) -> list[Row]:
    """Each product with what is on hand, what is held for orders, and what came in."""
    with db.connect() as connection:
        return connection.fetch_all(
            "SELECT p.sku, p.name, p.on_hand, p.received, "
            "COALESCE((SELECT SUM(l.quantity) FROM reserved_lines AS l "
            "JOIN reservations AS r ON r.order_id = l.order_id "
            "WHERE l.sku = p.sku AND r.state = 'held'), 0) AS held "
            "FROM products AS p ORDER BY p.sku"
        )


def holding(db: Database) -> set[str]:
    """The orders stock is held for."""
    with db.connect() as connection:
        rows = connection.fetch_all("SELECT order_id FROM reservations WHERE state = 'held'")
    return {row["order_id"] for row in rows}
