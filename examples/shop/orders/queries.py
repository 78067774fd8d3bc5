"""What the orders module tells those who ask (the scenario's summary, an admin page)."""

from __future__ import annotations

from ..db import Database, Row

__all__ = ["all_orders"]


def all_orders(db: Database) -> list[Row]:
    """Every stored order with its state, by order id."""
    with db.connect() as connection:
        return connection.fetch_all(
            "SELECT order_id, customer, total, state, reason FROM orders ORDER BY order_id"
        )
