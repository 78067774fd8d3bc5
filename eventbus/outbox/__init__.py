"""The transactional outbox: rows written in the business transaction, relayed after."""

from __future__ import annotations

from .._records import ClaimedRow, OutboxStatus, PendingRow
from ._relay import Relay
from ._sqlite import SQLiteOutbox

__all__ = ["ClaimedRow", "OutboxStatus", "PendingRow", "Relay", "SQLiteOutbox"]
