"""Every module's tables, in one place for the app that creates them and the reset that
drops them. Each module owns its DDL in its own ``schema`` module."""

from __future__ import annotations

from .inventory import schema as inventory
from .notifications import schema as notifications
from .orders import schema as orders
from .payments import schema as payments

__all__ = ["TABLES"]

TABLES: dict[str, str] = {
    **orders.TABLES,
    **inventory.TABLES,
    **payments.TABLES,
    **notifications.TABLES,
}
"""Table name to ``CREATE TABLE IF NOT EXISTS`` (portable: SQLite and PostgreSQL)."""
