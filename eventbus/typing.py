"""Protocols for the seams of eventbus, for type annotations and third-party backends.

Every seam is here: the codec, the stores (outbox, inbox, dead letters), the transaction
controls a store supplies, and the transport with what it delivers. A backend is written
against these and the plain values they name (``eventbus.outbox``, ``eventbus.transports``,
``eventbus.DeadLetter``), nothing private.

A backend's optional abilities are small protocols of their own (``Supports...``), and
eventbus tests a backend with ``isinstance`` against them, once, when it takes the
backend in hand: a method with the right name is all it takes to offer one. They keep
the concrete names the backends have always had (``listen``, ``is_contention``,
``touch``, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, runtime_checkable

from ._events import EventInstance

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator, Iterable, Sequence
    from contextlib import AbstractContextManager
    from datetime import datetime

    from ._envelope import Envelope
    from ._records import Capabilities, ClaimedRow, DeadLetter, Message, OutboxStatus, PendingRow

__all__ = [
    "AsyncTransactionControl",
    "Codec",
    "CommitHook",
    "DeadLetterStore",
    "EventInstance",
    "Inbox",
    "OutboxStore",
    "Received",
    "SupportsAmbientTransaction",
    "SupportsAsyncTransactionControl",
    "SupportsAsyncWrite",
    "SupportsClaimRuns",
    "SupportsClear",
    "SupportsContention",
    "SupportsCreateSchema",
    "SupportsDeclare",
    "SupportsListen",
    "SupportsOpenTransaction",
    "SupportsPending",
    "SupportsRedeliveryTimeout",
    "SupportsSchemaSQL",
    "SupportsTouch",
    "SupportsTransactionControl",
    "TransactionControl",
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


# -- the outbox, the inbox, and what a store may offer ----------------------------------


@runtime_checkable
class Inbox(Protocol):
    """Per handler, the envelopes it has processed: at-least-once delivery made
    effectively-once. Keyed by (handler name, envelope id), never by a broker's id.

    ``mark`` records a pair once and says whether it was new; given the ``connection``
    of a handler's transaction, it writes there, so the mark commits with the handler's
    effects (or not at all). A bus's worker uses its outbox as its inbox; without one, a
    bounded inbox in memory.
    """

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool: ...

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]: ...

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool: ...


@runtime_checkable
class OutboxStore(Inbox, Protocol):
    """The outbox table in the application's database, with the inbox beside it.

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
    ``complete`` writes the inbox marks of ``processed`` even when the fence deletes no
    row: those handlers did run.

    What a store may offer beyond this, each its own protocol: ``SupportsTransactionControl``
    (``bus.transaction`` on the store's kind of connection), ``SupportsAsyncTransactionControl``
    with ``SupportsAsyncWrite`` (``bus.atransaction``), ``SupportsListen`` (commits in other
    processes wake the relay), ``SupportsContention`` (its driver's lock waits are retried
    uncounted), ``SupportsOpenTransaction`` (a publish that would escape an open transaction
    is refused), ``SupportsAmbientTransaction`` (publishes join the transactions its framework
    opens, Django's atomic blocks), ``SupportsSchemaSQL`` and ``SupportsCreateSchema``
    (``eventbus outbox init``).
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

    def handler_transaction(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...


CommitHook = Callable[[list[Callable[[], None]]], None]
"""Keeps callbacks until the transaction open on a resource commits (then runs them), and
drops them if the part of that transaction open at the call rolls back."""


class TransactionControl(Protocol):
    """Begin, end and nest transactions on one resource (connection or session): how
    ``bus.transaction(resource)`` drives it. The core has one for stdlib ``sqlite3``
    connections; a store supplies one for its own kind (``SupportsTransactionControl``)."""

    def in_transaction(self) -> bool: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def savepoint(self) -> object: ...

    def release(self, savepoint: object) -> None: ...

    def rollback_to(self, savepoint: object) -> None: ...

    def owner_commit(self) -> CommitHook | None:
        """For a transaction open before ``bus.transaction()`` (which joins it): how to
        wait for its commit, or None when this resource cannot report it."""


class AsyncTransactionControl(Protocol):
    """``TransactionControl`` for an async resource: the same steps, awaited."""

    def in_transaction(self) -> bool: ...

    async def begin(self) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    async def savepoint(self) -> object: ...

    async def release(self, savepoint: object) -> None: ...

    async def rollback_to(self, savepoint: object) -> None: ...

    def owner_commit(self) -> CommitHook | None:
        """As ``TransactionControl.owner_commit`` (registering callbacks does no I/O)."""


@runtime_checkable
class SupportsTransactionControl(Protocol):
    """A store that drives its own kind of connection in ``bus.transaction()``."""

    def transaction_control(self, resource: object) -> TransactionControl | None:
        """The control for ``resource``, or None for a resource the store does not know."""


@runtime_checkable
class SupportsAsyncTransactionControl(Protocol):
    """A store that drives async resources (an ``AsyncSession``) in ``bus.atransaction()``;
    it must offer ``SupportsAsyncWrite`` too."""

    def async_transaction_control(self, resource: object) -> AsyncTransactionControl | None:
        """The async control for ``resource``, or None for a resource it does not know."""


@runtime_checkable
class SupportsAsyncWrite(Protocol):
    """A store that writes outbox rows through an async resource: ``write``, awaited."""

    async def awrite(self, resource: Any, rows: Sequence[PendingRow]) -> None: ...


@runtime_checkable
class SupportsClaimRuns(Protocol):
    """A store whose claim can lease a run of several rows of one key at once.

    ``claim(per_key=n)`` may return up to ``n`` rows of one (destination, key): the
    key's first rows in id order, consecutive, each due and unleased, the first with no
    earlier row of its key left in any state (the claim invariant, for the run's head).
    ``claims_runs`` says whether this store does (a store that wraps another may not).
    """

    claims_runs: bool

    def claim(
        self, *, owner: str, batch: int, lease: float, per_key: int = 1
    ) -> list[ClaimedRow]: ...


@runtime_checkable
class SupportsListen(Protocol):
    """A store whose database tells of commits in other processes (PostgreSQL LISTEN)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` (from any thread) when another process commits outbox rows;
        returns how to stop listening. Only an early wake-up: the relay polls anyway."""


@runtime_checkable
class SupportsContention(Protocol):
    """A store that recognises its driver's lock waits and deadlocks."""

    def is_contention(self, error: BaseException) -> bool:
        """Whether ``error`` is the database being busy, not the handler being wrong: the
        relay then tries the row again soon without counting an attempt."""


@runtime_checkable
class SupportsOpenTransaction(Protocol):
    """A store that knows which transactions the current thread or task has open."""

    def open_transaction(self) -> object | None:
        """A resource of the store's database with a transaction that the current thread
        or task began and that is still open, or None. A durable or after-commit publish
        outside ``bus.transaction()`` is refused while there is one."""


@runtime_checkable
class SupportsAmbientTransaction(Protocol):
    """A store whose framework opens the application's transactions itself, without
    ``bus.transaction()`` (Django's ``transaction.atomic()``), and whose publishes join them.

    The store must also offer ``SupportsTransactionControl`` for the resource it returns:
    its ``owner_commit()`` is how after-commit handlers wait for that transaction's commit
    (None: they are refused there). Consulted on a durable or after-commit publish only,
    before any ``bus.transaction()`` scope: the framework's transaction, savepoints
    included, is the unit of work, so what a publish writes goes in the innermost one.
    """

    def ambient_transaction(self) -> object | None:
        """The resource (connection) of the outbox's database whose transaction the
        current thread or task has open, or None (autocommit: a durable publish then
        commits its row on its own). Its outbox rows are written through it at once, so
        they commit or roll back with that transaction and its savepoints."""


@runtime_checkable
class SupportsSchemaSQL(Protocol):
    """A store that can print its DDL (``eventbus outbox init --sql``)."""

    def schema_sql(self) -> str: ...


@runtime_checkable
class SupportsCreateSchema(Protocol):
    """A store that can create its own tables (``eventbus outbox init``)."""

    def create_schema(self) -> None: ...


@runtime_checkable
class SupportsClear(Protocol):
    """A store that can empty itself between tests (``eventbus.testing.reset_bus`` and
    the pytest plugin's ``event_bus_isolation``)."""

    def clear(self) -> None:
        """Delete every outbox row, in any state, and every inbox mark. For tests: rows
        another process holds are deleted too."""


# -- transports --------------------------------------------------------------------------


@runtime_checkable
class Received(Protocol):
    """A message a consumer took from a transport, to acknowledge once it is handled.

    ``body`` is what the publisher's codec wrote: the worker decodes it (through the
    registry, the allow-list), so a transport never decides what gets deserialised.
    ``message_id`` is the broker's own id (a stream entry id, a delivery tag): for logs
    only, never for deduplication. ``delivery_count`` is 1 on the first delivery.
    A transport that redelivers after a timeout offers ``SupportsTouch`` on its messages.
    """

    topic: str
    body: bytes
    message_id: str
    delivery_count: int

    async def ack(self) -> None: ...

    async def nack(self, *, requeue: bool = True) -> None: ...


@runtime_checkable
class SupportsTouch(Protocol):
    """A received message that can be kept alive while its handlers run."""

    async def touch(self) -> None:
        """Tell the broker the message is still being handled: the worker calls it every
        third of the transport's ``redelivery_timeout`` while handlers run."""


@runtime_checkable
class Transport(Protocol):
    """Carries envelopes between processes; ``eventbus.transports.MemoryTransport`` is the
    reference. Async only: the bus runs it on its runtime.

    ``publish`` returns only when the broker has confirmed every message (raise
    otherwise: the relay then keeps the rows and tries again, so a message is never
    marked sent unconfirmed; ``MessageRejectedError`` for a message the broker will never
    take). ``subscribe`` yields messages of ``topics`` for the consumer ``group`` until the
    iterator is closed (an async generator's ``aclose``, which the worker calls when it
    stops or subscribes again); messages that were not acked by then are delivered again
    (to this group), in order.

    What a transport may offer beyond this, each its own protocol:
    ``SupportsRedeliveryTimeout``, ``SupportsDeclare``, ``SupportsPending``.
    """

    capabilities: ClassVar[Capabilities]

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self: ...

    async def connect(self) -> None: ...

    async def publish(self, topic: str, /, *messages: Message) -> None: ...

    def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SupportsRedeliveryTimeout(Protocol):
    """A transport that hands an unacknowledged message to another consumer after a while
    (a Redis min-idle, a NATS ack-wait); its messages then offer ``SupportsTouch``."""

    @property
    def redelivery_timeout(self) -> float:
        """Seconds after which an unacknowledged message goes to another consumer."""


@runtime_checkable
class SupportsDeclare(Protocol):
    """A transport that keeps a message only for groups that exist when it is published
    (RabbitMQ): a bus's worker declares its group's subscription before the bus's relay
    publishes anything."""

    async def declare(self, topics: Sequence[str], /, *, group: str) -> None:
        """Make the group's subscription to ``topics`` exist, without consuming."""


@runtime_checkable
class SupportsPending(Protocol):
    """A transport that can tell how many messages wait for a group (``bus.drain`` waits
    for them: the memory transport)."""

    def pending(self, group: str) -> int:
        """Messages of ``group`` not acknowledged yet, ready or held."""
