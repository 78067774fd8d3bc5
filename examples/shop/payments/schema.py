"""The payments module's tables (portable DDL: SQLite and PostgreSQL)."""

from __future__ import annotations

__all__ = ["TABLES"]

TABLES = {
    # One row per order: its primary key makes a redelivered PaymentRequested a no-op.
    "payments": """CREATE TABLE IF NOT EXISTS payments (
        order_id TEXT PRIMARY KEY,
        amount TEXT NOT NULL,
        state TEXT NOT NULL,
        reference TEXT,
        reason TEXT
    )""",
}
