"""What this integration takes from the eventbus core, in one place.

Every name the package uses from ``eventbus`` is imported here and nowhere else, so the
seam between Django and the core reads in one screen and moves in one edit.
"""

from __future__ import annotations

import logging

from eventbus import (
    ConfigurationError,
    DeadLetter,
    DeadLetterStoreError,
    EventBus,
    MissingDependencyError,
    RedactingFilter,
    RetryPolicy,
    redact,
)
from eventbus.deadletters import checks
from eventbus.errors import OutboxError
from eventbus.outbox import ClaimedRow, OutboxStatus, PendingRow
from eventbus.typing import CommitHook, DeadLetterStore, TransactionControl

__all__ = [
    "ClaimedRow",
    "CommitHook",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterStore",
    "DeadLetterStoreError",
    "EventBus",
    "MissingDependencyError",
    "OutboxError",
    "OutboxStatus",
    "PendingRow",
    "RetryPolicy",
    "TransactionControl",
    "checks",
    "logger",
    "redact",
]

logger = logging.getLogger("eventbus.django")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core
