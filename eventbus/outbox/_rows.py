"""What the outbox holds and hands to the relay: rows, one per envelope and destination."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import attrs

__all__ = ["ClaimedRow", "OutboxStatus", "PendingRow", "first_failure"]


@attrs.frozen
class PendingRow:
    """A row to write in the business transaction: an encoded envelope for a destination.

    ``destination`` is a durable handler's name (delivered in this process) or, once
    transports land, a topic. One row per destination is what lets a failing handler be
    retried alone (Spring Modulith's "publication per listener").
    """

    envelope_id: uuid.UUID
    name: str
    destination: str
    key: str | None
    payload: bytes


@attrs.frozen
class ClaimedRow:
    """A row the relay holds under a lease."""

    id: int
    envelope_id: uuid.UUID
    name: str
    destination: str
    key: str | None
    payload: bytes
    attempts: int
    """Attempts made before this one."""
    created_at: float
    """Unix seconds, database clock."""
    first_failed_at: float | None = None
    """Unix seconds (database clock) of the row's first failed delivery, kept by every
    reschedule; None while it has not failed (or for a store that does not keep it)."""
    seen: bool | None = attrs.field(default=None, eq=False)
    """Whether the inbox held (destination, envelope id) when the row was claimed, for a
    store that looks in the claim itself (saving the relay a round trip); None when the
    store did not look, and the relay asks ``seen_many``."""


def first_failure(row: ClaimedRow) -> datetime | None:
    """When ``row``'s delivery first failed, as an aware datetime (None: not before)."""
    if row.first_failed_at is None:
        return None
    return datetime.fromtimestamp(row.first_failed_at, UTC)


@attrs.frozen
class OutboxStatus:
    """How the outbox is doing (``eventbus outbox status``)."""

    pending: int
    in_flight: int
    delayed: int
    """Pending rows waiting for a retry time (``available_at`` in the future)."""
    oldest_age: float | None
    """Seconds since the oldest undelivered row was written, or None when empty."""
    by_name: dict[str, int]
