"""Every exception eventbus raises, in one tree.

Misuse errors also subclass the builtin a caller would already catch, so
``except ValueError`` keeps working around code that configures a bus::

    EventBusError
    ├── ConfigurationError(ValueError)        the bus, an event or a handler is declared wrongly
    │   ├── DuplicateHandlerError             two handlers share a name on one bus
    │   ├── DuplicateEventError               two classes claim one wire name (or one class two)
    │   ├── UnknownEventError                 a wire name or a class the registry does not know
    │   ├── HandlerSignatureError(TypeError)  a handler's annotation says no event type
    │   ├── TransactionScopeError             a publish would escape the caller's transaction
    │   └── UnknownTransportError(LookupError)  a URL scheme no transport serves
    ├── NotAnEventError(TypeError)            publish() was given something that is not an event
    ├── MissingDependencyError(ImportError)   an integration's extra is not installed
    ├── BusClosedError(RuntimeError)          publish() on a closed bus
    ├── AsyncHandlerError(TypeError)          publish() from sync code reached an async handler
    ├── DeliveryUnavailableError(RuntimeError)  a delivery mode this bus cannot carry out
    ├── DeliveryCancelledError                an after-commit delivery cut short by a stop
    ├── SerializationError(ValueError)
    │   ├── EncodeError                       an event cannot be written to the wire
    │   └── DecodeError                       bytes from the wire are not a valid envelope
    ├── TransportError                        a transport failed to carry a message (transient)
    │   └── MessageRejectedError              the broker will never take this message (too large)
    ├── OutboxError                           the outbox store failed
    ├── DeadLetterStoreError                  the dead-letter store failed
    │   └── DeadLetterNotFoundError(LookupError)  no dead letter has that id
    ├── DeadLetterNotReplayableError(ValueError)  no handler can take that letter (raw bytes)
    └── ReplayInProgressError(RuntimeError)   another replay holds that dead letter

Handler control flow lives on its own branch, so ``except EventBusError`` in a
handler never swallows it by accident::

    HandlerDirective(Exception)
    ├── RetryLater(delay)                     try again after ``delay`` seconds
    ├── RejectEvent(reason)                   give up now: straight to the dead letters
    └── SkipEvent                             nothing to do: count the event as handled

Warnings, for what is not refused but deserves a word (filter them by category)::

    ConfigurationWarning(UserWarning)         an EVENTBUS_* variable that is no setting
"""

from __future__ import annotations

__all__ = [
    "AsyncHandlerError",
    "BusClosedError",
    "ConfigurationError",
    "ConfigurationWarning",
    "DeadLetterNotFoundError",
    "DeadLetterNotReplayableError",
    "DeadLetterStoreError",
    "DecodeError",
    "DeliveryCancelledError",
    "DeliveryUnavailableError",
    "DuplicateEventError",
    "DuplicateHandlerError",
    "EncodeError",
    "EventBusError",
    "HandlerDirective",
    "HandlerSignatureError",
    "MessageRejectedError",
    "MissingDependencyError",
    "NotAnEventError",
    "OutboxError",
    "RejectEvent",
    "ReplayInProgressError",
    "RetryLater",
    "SerializationError",
    "SkipEvent",
    "TransactionScopeError",
    "TransportError",
    "UnknownEventError",
    "UnknownTransportError",
]


class EventBusError(Exception):
    """The root of every error eventbus raises."""


class ConfigurationError(EventBusError, ValueError):
    """An event, a handler or the bus itself is declared wrongly."""


class ConfigurationWarning(UserWarning):
    """A setting eventbus cannot place: an ``EVENTBUS_*`` environment variable that is not
    a setting and not like one (it is ignored). ``EVENTBUS_IGNORE`` names those that
    belong to other tools; or filter the category."""


class DuplicateHandlerError(ConfigurationError):
    """Two handlers on one bus share a name; names key the inbox and dead letters."""


class DuplicateEventError(ConfigurationError):
    """Two classes claim one wire name, or one class is registered twice."""


class UnknownEventError(ConfigurationError, LookupError):
    """A wire name (or class) that the registry does not know.

    Nothing is decoded unless its name is registered: this is the allow-list.
    """


class HandlerSignatureError(ConfigurationError, TypeError):
    """A handler's signature does not say which event it takes, or says it wrongly."""


class TransactionScopeError(ConfigurationError):
    """A durable or after-commit publish would escape the transaction it is made in.

    Raised before any handler runs, with nothing written: a publish outside
    ``bus.transaction()`` while the caller's own transaction on the outbox's database is
    open (its outbox row would commit on its own, its after-commit handlers run before
    that transaction commits), or an after-commit publish in a joined transaction whose
    commit the bus cannot see. The fix is ``with bus.transaction(session):``, which joins
    the open transaction.
    """


class UnknownTransportError(ConfigurationError, LookupError):
    """A transport URL whose scheme no installed transport serves."""


class NotAnEventError(EventBusError, TypeError):
    """``publish`` was given an object whose class is not a declared event."""


class MissingDependencyError(EventBusError, ImportError):
    """An integration needs an optional dependency that is not installed."""


class BusClosedError(EventBusError, RuntimeError):
    """The bus was closed; it publishes nothing more."""


class AsyncHandlerError(EventBusError, TypeError):
    """Sync ``publish`` would have to run a coroutine handler; use ``apublish``."""


class DeliveryUnavailableError(EventBusError, RuntimeError):
    """A handler's delivery mode needs machinery this bus does not have."""


class DeliveryCancelledError(EventBusError):
    """An after-commit delivery did not finish within its bus's ``shutdown_timeout`` and
    was cancelled by the stop (or the end of the interpreter). It is kept as a dead letter
    with this error: its handler may have run part way, so replay it once that is safe."""


class SerializationError(EventBusError, ValueError):
    """An event could not be written to, or read from, the wire."""


class EncodeError(SerializationError):
    """An event cannot be encoded: an unsupported value, a naive datetime, too large."""


class DecodeError(SerializationError):
    """Bytes are not a valid envelope: malformed, oversized, too deep, or of the wrong shape."""


class TransportError(EventBusError):
    """A transport failed to carry a message: the connection, a refusal, a missing confirm.

    The relay keeps the rows and tries again later: nothing is marked sent unconfirmed.
    """


class MessageRejectedError(TransportError):
    """The broker will never take this message (over its size limit): retrying cannot help.

    The relay dead-letters the row instead of retrying it forever.
    """


class OutboxError(EventBusError):
    """The outbox store failed."""


class DeadLetterStoreError(EventBusError):
    """The dead-letter store failed (unreachable, corrupt, or refused a write)."""


class DeadLetterNotFoundError(DeadLetterStoreError, LookupError):
    """No dead letter has that id (it may have been replayed or purged)."""


class DeadLetterNotReplayableError(EventBusError, ValueError):
    """This dead letter was written for bytes no handler can take (``@worker``: a message
    that could not be decoded or kept killing its consumer; ``@transport``: a message the
    broker refused for good). It can be shown, exported and purged, not replayed."""


class ReplayInProgressError(EventBusError, RuntimeError):
    """Another replay holds this dead letter right now; its handler is not run twice."""


class HandlerDirective(Exception):  # noqa: N818 - directives are control flow, not errors
    """Raised by a handler to steer what happens to the event it handles."""


class RetryLater(HandlerDirective):
    """Handle this event again after ``delay`` seconds."""

    def __init__(self, delay: float, reason: str = "") -> None:
        if delay < 0:
            raise ValueError(f"RetryLater delay must be >= 0 seconds, got {delay!r}")
        super().__init__(delay, reason)
        self.delay = float(delay)
        self.reason = reason

    def __str__(self) -> str:
        suffix = f": {self.reason}" if self.reason else ""
        return f"retry later, in {self.delay:g}s{suffix}"


class RejectEvent(HandlerDirective):
    """Give up on this event now: no retries, straight to the dead letters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"rejected: {self.reason}"


class SkipEvent(HandlerDirective):
    """Nothing to do for this event: it counts as handled."""
