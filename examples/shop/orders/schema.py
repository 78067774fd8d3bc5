"""The orders module's tables (portable DDL: SQLite and PostgreSQL)."""

from __future__ import annotations

__all__ = ["TABLES"]

TABLES = {
    "orders": """CREATE TABLE IF NOT EXISTS orders (
        order_id TEXT PRIMARY KEY,
        customer TEXT NOT NULL,
        payment_method TEXT NOT NULL,
        total TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT
    )""",
    "order_lines": """CREATE TABLE IF NOT EXISTS order_lines (
        order_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price TEXT NOT NULL,
        PRIMARY KEY (order_id, sku)
    )""",
    # The read model: what a customer's order page shows, kept by after-commit handlers.
    "order_overview": """CREATE TABLE IF NOT EXISTS order_overview (
        order_id TEXT PRIMARY KEY,
        customer TEXT,
        total TEXT,
        status TEXT,
        last_event_id TEXT,
        last_email TEXT
    )""",
}
"""Table name to DDL; money is decimal text, exact in every database."""
