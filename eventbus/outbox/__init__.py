"""The transactional outbox: rows written in the business transaction, relayed after.

``Relay(store, sink)`` moves a store's committed rows to a sink, knowing nothing of what
is behind it: this process's durable handlers (``_local``), or the bus's forwarder to a
transport (``eventbus.transports``). The row values live with the other seam values
(``eventbus._records``) and are imported from here.
"""

from __future__ import annotations

from .._records import ClaimedRow, OutboxStatus, PendingRow
from ._relay import Relay
from ._sqlite import SQLiteOutbox

__all__ = ["ClaimedRow", "OutboxStatus", "PendingRow", "Relay", "SQLiteOutbox"]
