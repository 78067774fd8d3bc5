"""What the machinery below the bus reads of it: one narrow, immutable context.

Deliveries, replays, the relay's sinks and the worker never receive the bus. They get
this: where work runs (the runtime), how envelopes become bytes (the codec, and the
registry it resolves names in), which handlers there are (the table, read by name and by
event class), where given-up envelopes go (the dead-letter store), the retry policy of
handlers that have none of their own, the transactions whose scopes a connection-taking
handler's publishes join, and the sender the hooks name (the bus the application holds:
the hooks' documented sender, passed along and never looked into).

So each of them can be built and tested on its own, with a context made of parts.

The sender is held weakly: the bus holds its context, and a context holding the bus would
make every bus a reference cycle, kept alive until the cyclic collector runs, where a bus
nobody holds should be gone at once (a forgotten bus that still tracked causation would
slow every other bus's publishes meanwhile).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._events import EventRegistry
    from ._handlers import HandlerTable
    from ._retry import RetryPolicy
    from ._runtime import Runtime
    from ._transactions import Transactions
    from .typing import Codec, DeadLetterStore

__all__ = ["Context"]


def _weakly(sender: object) -> Callable[[], object]:
    try:
        return weakref.ref(sender)
    except TypeError:  # not weakly referable (an object()): held as it is
        return lambda: sender


@attrs.frozen(eq=False)
class Context:
    """What a delivery needs of a bus; a bus makes one when it is made."""

    runtime: Runtime
    registry: EventRegistry
    codec: Codec
    handlers: HandlerTable
    dead_letters: DeadLetterStore
    retry: RetryPolicy
    """The policy of handlers that have none of their own (``subscribe(retry=...)``)."""
    transactions: Transactions
    """The bus's transactions: a connection-taking handler runs in one of its outbox's,
    and what the handler publishes joins that transaction's scope."""
    _sender: Callable[[], object] = attrs.field(alias="sender", converter=_weakly)

    @property
    def sender(self) -> object:
        """What every hook is sent with: the bus the application holds (None once it is
        gone; nothing it started is left running for long then)."""
        return self._sender()
