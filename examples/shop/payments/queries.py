"""What the payments module tells those who ask (the scenario's summary, an admin page)."""

from __future__ import annotations

from ..db import Database, Row

__all__ = ["all_payments"]


def all_payments(db: Database) -> list[Row]:
    """Every payment with its outcome, by order id."""
    with db.connect() as connection:
        return connection.fetch_all(
            "SELECT order_id, amount, state, reference, reason FROM payments ORDER BY order_id"
        )
