"""DeadLetter: an envelope a handler gave up on, with why.

Two constructors, one for each kind of letter: ``from_failure`` (a handler gave up on a
decoded envelope, with the exception) and ``raw`` (bytes that never reached a handler:
an outbox row or a broker message that cannot be decoded, a message the broker refused
or one that kept killing its consumer). Both give the letter a UUIDv7 id; whoever builds
a letter, its message and traceback are masked (``eventbus.redact``) and bounded.
"""

from __future__ import annotations

import traceback as traceback_module
import uuid
from datetime import UTC, datetime

import attrs

from .._envelope import Envelope, uuid7
from .._redact import bounded, redact
from ..typing import Codec

__all__ = ["MAX_MESSAGE", "MAX_TRACEBACK", "DeadLetter"]

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

    def envelope(self, codec: Codec) -> Envelope:
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
        codec: Codec,
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
