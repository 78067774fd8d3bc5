"""The plain values that cross the seams: what stores, transports and dead-letter stores
take and give, with no behaviour beyond checking and masking themselves.

Everything here is data: outbox rows (``PendingRow`` written, ``ClaimedRow`` handed to the
relay, ``OutboxStatus``), what a transport carries (``Message``, ``Capabilities``), and
``DeadLetter`` with its two constructors. The names users import live where they always
did (``eventbus.outbox``, ``eventbus.transports``, ``eventbus``); this module sits at the
bottom so that ``eventbus.typing`` and every backend can use them without importing
anything above.
"""

from __future__ import annotations

import traceback as traceback_module
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Protocol, Self

import attrs

from ._envelope import uuid7
from ._redact import bounded, redact

if TYPE_CHECKING:
    from ._envelope import Envelope

__all__ = [
    "FORWARD",
    "MAX_MESSAGE",
    "MAX_TRACEBACK",
    "WORKER_HANDLER",
    "Capabilities",
    "ClaimedRow",
    "DeadLetter",
    "Message",
    "OutboxStatus",
    "PendingRow",
    "envelope_uuid",
    "first_failure",
]

FORWARD = "@transport"
"""The outbox destination of rows bound for the transport (handler names cannot start with
'@'); also the handler name of dead letters for messages the broker refused for good."""

WORKER_HANDLER = "@worker"
"""The handler name of dead letters the worker writes itself (garbage, delivery limit)."""


# -- the outbox ------------------------------------------------------------------------


@attrs.frozen
class PendingRow:
    """A row to write in the business transaction: an encoded envelope for a destination.

    ``destination`` is a durable handler's name (delivered in this process) or
    ``FORWARD`` (one row per event, published to the bus's transport). One row per
    handler is what lets a failing handler be retried alone (Spring Modulith's
    "publication per listener").
    """

    envelope_id: uuid.UUID
    name: str
    destination: str
    key: str | None
    payload: bytes


_claimed_row = tuple.__new__


class ClaimedRow(tuple[Any, ...]):
    """A row the relay holds under a lease.

    A tuple of the columns a claim returns, in order (``id``, ``envelope_id``, ``name``,
    ``destination``, ``key``, ``payload``, ``attempts``, ``created_at``,
    ``first_failed_at``, ``seen``), named by properties: a claim of hundreds of rows
    builds each with one C call (``from_columns``), where a class with fields cost
    about 3 µs a row, more than the claim's SQL. The envelope id stays as the database
    gave it (its text) until someone asks for the ``UUID``: forwarding sends the text.
    """

    __slots__ = ()

    def __new__(  # noqa: PLR0917 - the fields a row had as keywords, in their order
        cls,
        id: int,  # noqa: A002 - the row's name for it
        envelope_id: uuid.UUID | str,
        name: str,
        destination: str,
        key: str | None,
        payload: bytes,
        attempts: int,
        created_at: float,
        first_failed_at: float | None = None,
        seen: bool | None = None,
    ) -> Self:
        return _claimed_row(
            cls,
            (
                id,
                envelope_id,
                name,
                destination,
                key,
                payload,
                attempts,
                created_at,
                first_failed_at,
                seen,
            ),
        )

    @classmethod
    def from_columns(cls, columns: Iterable[Any]) -> Self:
        """A row from the values of the claimed columns in the order above (``seen``
        included: None where the store did not look in the inbox). The values are taken
        as they are: ``id`` and ``attempts`` ints, ``payload`` bytes, times floats, the
        envelope id its text (or a ``UUID``)."""
        return _claimed_row(cls, columns)

    id: int = property(itemgetter(0))  # type: ignore[assignment]
    name: str = property(itemgetter(2))  # type: ignore[assignment]
    destination: str = property(itemgetter(3))  # type: ignore[assignment]
    key: str | None = property(itemgetter(4))  # type: ignore[assignment]
    payload: bytes = property(itemgetter(5))  # type: ignore[assignment]
    attempts: int = property(itemgetter(6))  # type: ignore[assignment]
    """Attempts made before this one."""
    created_at: float = property(itemgetter(7))  # type: ignore[assignment]
    """Unix seconds, database clock."""
    first_failed_at: float | None = property(itemgetter(8))  # type: ignore[assignment]
    """Unix seconds (database clock) of the row's first failed delivery, kept by every
    reschedule; None while it has not failed (or for a store that does not keep it)."""

    @property
    def envelope_id(self) -> uuid.UUID:
        value = self[1]
        return value if type(value) is uuid.UUID else uuid.UUID(value)

    @property
    def envelope_text(self) -> str:
        """The envelope id in its canonical text (what brokers and the inbox store),
        without parsing it when the database gave it as text."""
        value = self[1]
        return value if type(value) is str else str(value)

    @property
    def seen(self) -> bool | None:
        """Whether the inbox held (destination, envelope id) when the row was claimed, for
        a store that looks in the claim itself (saving the relay a round trip); None when
        the store did not look, and the relay asks ``seen_many``."""
        value = self[9]
        return None if value is None else bool(value)

    def __eq__(self, other: object) -> bool:
        # As rows, whatever form the envelope id took; ``seen`` is not the row's own.
        if not isinstance(other, ClaimedRow):
            return NotImplemented
        return (
            self[0] == other[0]
            and self.envelope_text == other.envelope_text
            and (self[2:9] == other[2:9])
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self[0], self.envelope_text, self[2:9]))

    def __repr__(self) -> str:
        return (
            f"ClaimedRow(id={self[0]!r}, envelope_id={self.envelope_text!r}, "
            f"name={self[2]!r}, destination={self[3]!r}, key={self[4]!r}, "
            f"attempts={self[6]!r})"
        )

    def __getnewargs__(self) -> tuple[Any, ...]:
        return tuple(self)


class _TextUUID(uuid.UUID):
    """A UUID that keeps the canonical text it was read from: forwarding hands brokers the
    envelope id as text, which a row holds already; parsing it into a ``UUID`` only for a
    transport to turn it back into the same text cost about 2 µs a row."""

    __slots__ = ("_text",)
    _text: str

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"UUID({self._text!r})"


_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def envelope_uuid(row: ClaimedRow) -> uuid.UUID:
    """``row``'s envelope id as a ``UUID`` (equal to, and hashing as, the parsed one),
    built from its canonical text without parsing it twice."""
    value = row[1]
    if type(value) is not str or len(value) != 36 or not value.islower():
        return row.envelope_id
    made = object.__new__(_TextUUID)
    _set(made, "int", int(value.replace("-", ""), 16))
    _set(made, "is_safe", _UNKNOWN)
    _set(made, "_text", value)
    return made


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


# -- transports --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Message:
    """An encoded envelope on its way to a broker.

    The relay sends the bytes the codec wrote at publish time (inside the business
    transaction), so nothing is encoded twice and a transport never sees an event object.
    ``id`` is the envelope's id: brokers that deduplicate publishes (JetStream's
    ``Nats-Msg-Id``) use it, so a publish retried after a lost reply is stored once.
    ``key`` is the ordering key, for transports that partition by it.
    """

    id: uuid.UUID
    topic: str
    """The event's wire name: a Redis stream suffix, a RabbitMQ routing key, a NATS subject."""
    key: str | None
    body: bytes = attrs.field(repr=False)


@attrs.frozen(slots=True, kw_only=True)
class Capabilities:
    """What a transport can do; the contract suite switches its tests on these."""

    persistent: bool
    """Messages survive a restart of the broker (within the durability it documents)."""
    ordered_per_key: bool
    """One consumer of a group receives one topic's messages of one key in publish order
    (a partitioned topic, as Kafka's, may interleave different keys)."""
    consumer_groups: bool
    """Consumers sharing a group share the work: each message goes to one of them."""
    counts_deliveries: bool
    """``Received.delivery_count`` is the broker's count, so a message that keeps
    killing its consumer can be dead-lettered past a limit."""
    new_groups_read_history: bool = False
    """A group that subscribes for the first time reads what was published before it
    existed (a Redis group made at id 0, a JetStream consumer delivering everything)."""
    native_dead_letter: bool = False
    """The broker itself moves messages past a delivery limit aside."""
    delayed_redelivery: bool = False
    """``nack`` can ask the broker to redeliver later rather than at once."""
    ordered_batches: bool = False
    """A ``publish`` of several messages never stores a later one when an earlier one was
    not stored (a failure leaves at most a prefix, in order). The relay then forwards
    several outbox rows of one key per claim; otherwise one, and the next only once the
    broker confirmed it."""


# -- dead letters ----------------------------------------------------------------------
#
# Two constructors, one for each kind of letter: ``from_failure`` (a handler gave up on a
# decoded envelope, with the exception) and ``raw`` (bytes that never reached a handler:
# an outbox row or a broker message that cannot be decoded, a message the broker refused
# or one that kept killing its consumer). Both give the letter a UUIDv7 id; whoever builds
# a letter, its message and traceback are masked (``eventbus.redact``) and bounded. Of a
# codec a letter needs one method each way, named here so that nothing above is imported.


class _Decoder(Protocol):
    def decode(self, data: bytes) -> Envelope: ...


class _Encoder(Protocol):
    def encode(self, envelope: Envelope) -> bytes: ...


MAX_MESSAGE = 2_000
MAX_TRACEBACK = 20_000


def _masked_message(value: object) -> object:
    """A field converter: text masked and cut; anything else is left for the stores'
    checks to refuse with a clear error."""
    return bounded(redact(value), MAX_MESSAGE) if isinstance(value, str) else value


def _masked_traceback(value: object) -> object:
    return bounded(redact(value), MAX_TRACEBACK) if isinstance(value, str) else value


@attrs.frozen(kw_only=True)
class DeadLetter:
    """A dead letter: the whole envelope (encoded), the handler, the error, the attempts.

    ``payload`` is the envelope as the codec wrote it, so a letter can be listed and
    purged even when its event class no longer exists; ``envelope(codec)`` decodes it.
    ``message`` (at most 2,000 characters) and ``traceback`` (at most 20,000) are masked
    and bounded by the class itself, so no letter keeps a password, whoever builds it.
    """

    id: uuid.UUID
    envelope_id: uuid.UUID
    event_name: str
    handler: str
    error_type: str
    message: str = attrs.field(converter=_masked_message)
    traceback: str = attrs.field(converter=_masked_traceback)
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    payload: bytes = attrs.field(repr=False)

    def envelope(self, codec: _Decoder) -> Envelope:
        """The dead envelope, decoded (raises DecodeError/UnknownEventError if it cannot be)."""
        return codec.decode(self.payload)

    @classmethod
    def from_failure(
        cls,
        *,
        envelope: Envelope,
        handler: str,
        error: BaseException,
        attempts: int,
        first_failed_at: datetime,
        codec: _Encoder,
        now: datetime | None = None,
        payload: bytes | None = None,
    ) -> DeadLetter:
        """Record ``error`` as the reason ``handler`` gave up on ``envelope``.

        ``payload`` is the envelope as already encoded (an outbox row's bytes); without
        it the codec encodes the envelope (EncodeError if it cannot).
        """
        trace = "".join(traceback_module.format_exception(error))
        return cls(
            id=uuid7(),
            envelope_id=envelope.id,
            event_name=envelope.name,
            handler=handler,
            error_type=_qualified(type(error)),
            message=str(error),
            traceback=trace,
            attempts=attempts,
            first_failed_at=first_failed_at,
            last_failed_at=now or datetime.now(UTC),
            payload=codec.encode(envelope) if payload is None else payload,
        )

    @classmethod
    def raw(
        cls,
        *,
        payload: bytes,
        envelope_id: uuid.UUID,
        event_name: str,
        handler: str,
        error: BaseException | None = None,
        error_type: str | None = None,
        message: str = "",
        attempts: int,
        first_failed_at: datetime | None = None,
        now: datetime | None = None,
    ) -> DeadLetter:
        """A letter for bytes that never reached a handler, kept as they came.

        Why: ``error`` (its type and text), or ``error_type`` and ``message``.
        ``handler`` names who gave up (``@worker``, ``@transport``, or the outbox row's
        handler). No traceback: nothing ran.
        """
        if error is not None:
            error_type = error_type or _qualified(type(error))
            message = message or str(error)
        if error_type is None:
            raise TypeError("DeadLetter.raw() needs an error, or an error_type and a message")
        last = now or datetime.now(UTC)
        return cls(
            id=uuid7(),
            envelope_id=envelope_id,
            event_name=event_name,
            handler=handler,
            error_type=error_type,
            message=message,
            traceback="",
            attempts=attempts,
            first_failed_at=first_failed_at or last,
            last_failed_at=last,
            payload=payload,
        )

    def failed_again(self, error: BaseException, *, attempts: int) -> DeadLetter:
        """This letter after a replay that failed too: the new error, more attempts."""
        trace = "".join(traceback_module.format_exception(error))
        return attrs.evolve(
            self,
            error_type=_qualified(type(error)),
            message=str(error),
            traceback=trace,
            attempts=self.attempts + attempts,
            last_failed_at=datetime.now(UTC),
        )


def _qualified(cls: type[BaseException]) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
