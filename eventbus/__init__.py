"""eventbus: a typed in-process event bus for Python monoliths.

Declare events with ``@event``, subscribe handlers with ``@bus.subscribe``, publish with
``bus.publish`` or ``await bus.apublish``. See the README for the tour.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._bus import EventBus
from ._codec import JSONCodec
from ._delivery import ReplayResult
from ._envelope import Envelope, uuid7
from ._events import EventRegistry, EventType, default_registry, event, upcaster
from ._handlers import Delivery, Handler
from ._redact import RedactingFilter, describe_error, redact
from ._retry import RetryPolicy
from .deadletters import DeadLetter, MemoryDeadLetterStore, SQLiteDeadLetterStore
from .errors import (
    AsyncHandlerError,
    BusClosedError,
    ConfigurationError,
    ConfigurationWarning,
    DeadLetterNotFoundError,
    DeadLetterNotReplayableError,
    DeadLetterStoreError,
    DecodeError,
    DeliveryCancelledError,
    DeliveryUnavailableError,
    DuplicateEventError,
    DuplicateHandlerError,
    EncodeError,
    EventBusError,
    HandlerSignatureError,
    MessageRejectedError,
    MissingDependencyError,
    NotAnEventError,
    RejectEvent,
    ReplayInProgressError,
    RetryLater,
    SerializationError,
    SkipEvent,
    TransactionScopeError,
    TransportError,
    UnknownEventError,
    UnknownTransportError,
)
from .outbox import OutboxStatus, SQLiteOutbox

try:
    __version__ = version("eventbus")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AsyncHandlerError",
    "BusClosedError",
    "ConfigurationError",
    "ConfigurationWarning",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "DeadLetterNotReplayableError",
    "DeadLetterStoreError",
    "DecodeError",
    "Delivery",
    "DeliveryCancelledError",
    "DeliveryUnavailableError",
    "DuplicateEventError",
    "DuplicateHandlerError",
    "EncodeError",
    "Envelope",
    "EventBus",
    "EventBusError",
    "EventRegistry",
    "EventType",
    "Handler",
    "HandlerSignatureError",
    "JSONCodec",
    "MemoryDeadLetterStore",
    "MessageRejectedError",
    "MissingDependencyError",
    "NotAnEventError",
    "OutboxStatus",
    "RedactingFilter",
    "RejectEvent",
    "ReplayInProgressError",
    "ReplayResult",
    "RetryLater",
    "RetryPolicy",
    "SQLiteDeadLetterStore",
    "SQLiteOutbox",
    "SerializationError",
    "SkipEvent",
    "TransactionScopeError",
    "TransportError",
    "UnknownEventError",
    "UnknownTransportError",
    "__version__",
    "default_registry",
    "describe_error",
    "event",
    "redact",
    "upcaster",
    "uuid7",
]
