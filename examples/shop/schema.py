"""Every module's tables, in one place for the app that creates them and the reset that
empties them. Each module owns its DDL in its own ``schema`` module; the event flow's
tables are the scenario's (``flow``)."""

from __future__ import annotations

from . import flow
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
    **flow.TABLES,
}
"""Table name to ``CREATE TABLE IF NOT EXISTS`` (portable: SQLite and PostgreSQL)."""
