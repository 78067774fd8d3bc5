"""DeadLetter: an envelope a handler gave up on, with why."""

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


@attrs.frozen(kw_only=True)
class DeadLetter:
    """A dead letter: the whole envelope (encoded), the handler, the error, the attempts.

    ``payload`` is the envelope as the codec wrote it, so a letter can be listed and
    purged even when its event class no longer exists; ``envelope(codec)`` decodes it.
    Messages and tracebacks are bounded and have URL passwords masked.
    """

    id: uuid.UUID
    envelope_id: uuid.UUID
    event_name: str
    handler: str
    error_type: str
    message: str
    traceback: str
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
    ) -> DeadLetter:
        """Record ``error`` as the reason ``handler`` gave up on ``envelope``."""
        trace = "".join(traceback_module.format_exception(error))
        return cls(
            id=uuid7(),
            envelope_id=envelope.id,
            event_name=envelope.name,
            handler=handler,
            error_type=_qualified(type(error)),
            message=bounded(redact(str(error)), MAX_MESSAGE),
            traceback=bounded(redact(trace), MAX_TRACEBACK),
            attempts=attempts,
            first_failed_at=first_failed_at,
            last_failed_at=now or datetime.now(UTC),
            payload=codec.encode(envelope),
        )

    def failed_again(self, error: BaseException, *, attempts: int) -> DeadLetter:
        """This letter after a replay that failed too: the new error, more attempts."""
        trace = "".join(traceback_module.format_exception(error))
        return attrs.evolve(
            self,
            error_type=_qualified(type(error)),
            message=bounded(redact(str(error)), MAX_MESSAGE),
            traceback=bounded(redact(trace), MAX_TRACEBACK),
            attempts=self.attempts + attempts,
            last_failed_at=datetime.now(UTC),
        )


def _qualified(cls: type[BaseException]) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
