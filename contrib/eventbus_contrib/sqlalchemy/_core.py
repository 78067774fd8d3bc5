"""What this integration takes from the eventbus core, in one place.

Every name the package uses from ``eventbus`` is imported here and nowhere else, so the
seam between this integration and the core reads in one screen and moves in one edit.
Also the package's logger, which masks secrets with the core's filter like every logger
of eventbus.
"""

from __future__ import annotations

import logging

from eventbus import RedactingFilter, redact
from eventbus._handlers import register_resource_type
from eventbus._transactions import AsyncTransactionControl, CommitHook, TransactionControl
from eventbus.errors import ConfigurationError, MissingDependencyError, OutboxError
from eventbus.outbox import ClaimedRow, OutboxStatus, PendingRow

__all__ = [
    "AsyncTransactionControl",
    "ClaimedRow",
    "CommitHook",
    "ConfigurationError",
    "MissingDependencyError",
    "OutboxError",
    "OutboxStatus",
    "PendingRow",
    "TransactionControl",
    "logger",
    "redact",
    "register_resource_type",
]

logger = logging.getLogger("eventbus.sqlalchemy")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core
