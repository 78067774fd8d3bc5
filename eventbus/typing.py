"""Protocols for the seams of eventbus, for type annotations and third-party backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from ._events import EventInstance

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Iterable, Sequence
    from contextlib import AbstractContextManager
    from datetime import datetime

    from ._envelope import Envelope
    from .deadletters import DeadLetter
    from .outbox import ClaimedRow, OutboxStatus, PendingRow
    from .transports import Capabilities, Message

__all__ = [
    "Codec",
    "DeadLetterStore",
    "EventInstance",
    "OutboxStore",
    "Received",
    "Transport",
]


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

    ``claim`` returns a row only while no earlier row of its (destination, key) is left
    in any state, leased ones included: the relay claims the next batch while the one in
    hand is still being delivered, and this rule is what keeps each key in order.
    ``reschedule`` stamps the row's first failure (returned by later claims as
    ``ClaimedRow.first_failed_at``) and later reschedules keep it: the row's dead letter
    says when it first failed (a store that keeps none returns None, and the letter says
    the time it is written). The ``error`` it stores is masked with ``eventbus.redact``.

    Optional, looked up by name: ``transaction_control(resource)`` (how
    ``bus.transaction`` drives the store's kind of connection), and for
    ``bus.atransaction``, ``async_transaction_control(resource)`` (an
    ``AsyncTransactionControl``, or None for a resource it does not know) with
    ``async def awrite(resource, rows)``, the async ``write``; ``listen(wake)`` (commits
    in other processes wake the relay; returns a function that stops listening);
    ``is_contention(error)`` (a lock wait or deadlock of the store's driver, retried
    without counting an attempt); ``schema_sql()`` and ``create_schema()`` (for
    ``eventbus outbox init``); ``open_transaction()`` (a resource of the store's
    database with a transaction that the current thread or task began and that is still
    open, or None: a durable or after-commit publish outside ``bus.transaction()`` is
    refused while there is one). ``complete`` writes the inbox marks of ``processed`` even
    when the fence deletes no row: those handlers did run.
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


@runtime_checkable
class Received(Protocol):
    """A message a consumer took from a transport, to acknowledge once it is handled.

    ``body`` is what the publisher's codec wrote: the worker decodes it (through the
    registry, the allow-list), so a transport never decides what gets deserialised.
    ``message_id`` is the broker's own id (a stream entry id, a delivery tag): for logs
    only, never for deduplication. ``delivery_count`` is 1 on the first delivery.

    Optional, looked up by name: ``async def touch()``, "still being handled", which
    a transport that redelivers after a timeout offers (the worker calls it every third
    of the transport's ``redelivery_timeout`` while handlers run).
    """

    topic: str
    body: bytes
    message_id: str
    delivery_count: int

    async def ack(self) -> None: ...

    async def nack(self, *, requeue: bool = True) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Carries envelopes between processes; ``eventbus.transports.MemoryTransport`` is the
    reference. Async only: the bus runs it on its runtime.

    ``publish`` returns only when the broker has confirmed every message (raise
    otherwise: the relay then keeps the rows and tries again, so a message is never
    marked sent unconfirmed). ``subscribe`` yields messages of ``topics`` for the
    consumer ``group`` until the iterator is closed; messages that were not acked by
    then are delivered again (to this group), in order. Errors in
    ``retryable_errors`` are transient (a lost connection): the caller retries.

    Optional, looked up by name: ``redelivery_timeout`` (seconds), for transports that
    hand an unacknowledged message to another consumer after a while; then ``Received``
    offers ``touch()``. ``async def declare(topics, /, *, group)``, for transports that
    keep a message only for groups that exist when it is published (RabbitMQ): make the
    group's subscription exist without consuming; a bus's worker calls it before the
    bus's relay publishes anything.
    """

    capabilities: ClassVar[Capabilities]
    retryable_errors: ClassVar[tuple[type[BaseException], ...]]

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self: ...

    async def connect(self) -> None: ...

    async def publish(self, topic: str, /, *messages: Message) -> None: ...

    def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]: ...

    async def aclose(self) -> None: ...
