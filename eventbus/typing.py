"""Protocols for the seams of eventbus, for type annotations and third-party backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable, Sequence
    from contextlib import AbstractContextManager
    from datetime import datetime

    from ._envelope import Envelope
    from .deadletters import DeadLetter
    from .outbox import ClaimedRow, OutboxStatus, PendingRow

__all__ = ["Codec", "DeadLetterStore", "OutboxStore"]


@runtime_checkable
class Codec(Protocol):
    """Turns envelopes into bytes and back. ``eventbus.JSONCodec`` is the default.

    ``decode`` must refuse anything that is not a registered event (``UnknownEventError``)
    and anything malformed or too large (``DecodeError``); it must never execute or import
    code named by its input.
    """

    content_type: ClassVar[str]

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, data: bytes | bytearray | memoryview | str) -> Envelope: ...

    def encode_event(self, event: object) -> dict[str, Any]: ...

    def decode_event(self, name: str, version: int, data: Any) -> Any: ...


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where envelopes that a handler gave up on are kept, until replayed or purged.

    Filters: ``handler`` and ``event_name`` match exactly; ``since``/``until`` bound
    ``last_failed_at`` (inclusive, aware datetimes). Listing is oldest failure first.
    A replay *claims* a letter for ``lease`` seconds under an ``owner`` name, so two
    concurrent replays never run its handler twice; a claim that outlives its lease (its
    replayer died) can be taken over.
    """

    def add(self, letter: DeadLetter) -> None: ...

    def get(self, letter_id: uuid.UUID) -> DeadLetter: ...

    def list(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]: ...

    def count(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int: ...

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None: ...

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool: ...

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None: ...

    def purge(
        self,
        *,
        letter_ids: Iterable[uuid.UUID] | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all: bool = False,  # noqa: A002 - reads as purge(all=True)
    ) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class OutboxStore(Protocol):
    """The outbox table in the application's database, and the inbox beside it.

    ``write`` runs in the caller's transaction, through the caller's connection (or
    session); everything else is the relay's, in short transactions of its own. Changes
    the relay makes are fenced by its lease ``owner``. ``SQLiteOutbox`` is the embedded
    default; ``eventbus_contrib.sqlalchemy`` serves PostgreSQL, MariaDB and SQLite.

    Optional, looked up by name: ``transaction_control(resource)`` (how
    ``bus.transaction`` drives the store's kind of connection), and for
    ``bus.atransaction``, ``async_transaction_control(resource)`` (an
    ``AsyncTransactionControl``, or None for a resource it does not know) with
    ``async def awrite(resource, rows)``, the async ``write``.
    """

    batch: int
    lease: float
    poll_interval: float
    resource_type: type[Any]
    """What ``handler_transaction`` yields, which connection-taking handlers annotate."""

    def write(self, connection: Any, rows: Sequence[PendingRow]) -> None: ...

    def write_now(self, rows: Sequence[PendingRow]) -> None: ...

    def claim(self, *, owner: str, batch: int, lease: float) -> list[ClaimedRow]: ...

    def complete(
        self,
        ids: Iterable[int],
        *,
        owner: str,
        processed: Sequence[tuple[str, uuid.UUID]] = (),
    ) -> int: ...

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool: ...

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int: ...

    def status(self) -> OutboxStatus: ...

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool: ...

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]: ...

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool: ...

    def handler_transaction(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...
