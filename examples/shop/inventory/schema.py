"""The inventory module's tables (portable DDL: SQLite and PostgreSQL)."""

from __future__ import annotations

__all__ = ["TABLES"]

TABLES = {
    "products": """CREATE TABLE IF NOT EXISTS products (
        sku TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        on_hand INTEGER NOT NULL,
        received INTEGER NOT NULL
    )""",
    # One row per order that asked for stock: its primary key is what makes a
    # redelivered OrderPlaced change nothing.
    "reservations": """CREATE TABLE IF NOT EXISTS reservations (
        order_id TEXT PRIMARY KEY,
        state TEXT NOT NULL
    )""",
    "reserved_lines": """CREATE TABLE IF NOT EXISTS reserved_lines (
        order_id TEXT NOT NULL,
        sku TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        PRIMARY KEY (order_id, sku)
    )""",
}
