"""Hooks: blinker signals that observe every step of an event's life.

Connect a receiver to watch; it is called with the bus as sender and keyword arguments::

    from eventbus import hooks

    @hooks.handler_failed.connect
    def log_failure(bus, *, envelope, handler, error): ...

    # only one bus:  hooks.event_published.connect(receiver, sender=bus)

Hooks observe, they never decide: a receiver that raises is logged (logger
``eventbus.hooks``) and delivery goes on as if it had not been connected. Receivers are
sync functions, called in the thread that did the step. With no receiver connected, a
publish does not build an envelope or send anything: connecting is what costs.

========================  ==========================================  =====================
signal                    keyword arguments                           sent
========================  ==========================================  =====================
``event_published``       envelope                                    on every publish,
                                                                      before any handler
``event_handled``         envelope, handler (name)                    a handler returned
``handler_failed``        envelope, handler, error                    a handler raised
``handler_retrying``      envelope, handler, error, attempt, delay    a retry is scheduled
``event_dead_lettered``   envelope, handler, error, letter            a handler gave up
``outbox_relayed``        envelopes (a tuple)                         the relay sent a batch
========================  ==========================================  =====================

``outbox_relayed`` names the envelopes the relay delivered to this process's handlers or
forwarded to a transport. Forwarding moves the stored bytes and never needs an envelope:
those rows are decoded for the hook only while a receiver of the bus's hook is
connected, so with none the forwarder decodes nothing.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from blinker import ANY, NamedSignal
from blinker._utilities import make_id

from ._redact import masked_logger as _masked_logger

__all__ = [
    "event_dead_lettered",
    "event_handled",
    "event_published",
    "handler_failed",
    "handler_retrying",
    "outbox_relayed",
]

logger = _masked_logger("eventbus.hooks")

F = TypeVar("F", bound=Callable[..., Any])


class _Watcher(Protocol):
    def _hooks_changed(self) -> None: ...


_watchers: weakref.WeakSet[_Watcher] = weakref.WeakSet()
_watchers_lock = threading.Lock()


def _watch(watcher: _Watcher) -> None:
    """Tell ``watcher`` (a bus) whenever a receiver connects or disconnects."""
    with _watchers_lock:
        _watchers.add(watcher)


def _changed() -> None:
    with _watchers_lock:
        watchers = list(_watchers)
    for watcher in watchers:
        watcher._hooks_changed()


class _Hook(NamedSignal):
    """A blinker signal that tells the buses when its receivers change.

    Buses precompute, per event type, whether a publish must build an envelope for
    observers; connecting a receiver invalidates that, so an unobserved publish pays
    nothing for hooks.
    """

    def connect(self, receiver: F, sender: Any = ANY, weak: bool = True) -> F:
        result = super().connect(receiver, sender, weak)
        _changed()
        return result

    def disconnect(self, receiver: Callable[..., Any], sender: Any = ANY) -> None:
        super().disconnect(receiver, sender)
        if sender is not ANY and not self._senders_of(receiver):
            # blinker keeps a receiver disconnected from its last sender in `receivers`,
            # which would make every publish keep paying for an observer that is gone.
            super().disconnect(receiver)
        _changed()

    def _senders_of(self, receiver: Callable[..., Any]) -> set[Any]:
        by_receiver: dict[Any, set[Any]] = getattr(self, "_by_receiver", {})
        return by_receiver.get(make_id(receiver), set())


def _heard(signal: NamedSignal, sender: object) -> bool:
    """Whether a receiver would hear ``sender`` on ``signal`` now: whether what it would be
    sent is worth building (the forwarder decodes rows for ``outbox_relayed`` only then)."""
    if signal.is_muted or not signal.receivers:
        return False
    return any(True for _ in signal.receivers_for(sender))


def _send(signal: NamedSignal, sender: object, **kwargs: Any) -> None:
    """Call every receiver; one that raises is logged and never stops the others."""
    if signal.is_muted or not signal.receivers:
        return
    for receiver in signal.receivers_for(sender):
        try:
            result = receiver(sender, **kwargs)
        except Exception:
            logger.exception(
                "hook receiver %r of %s raised; delivery goes on", receiver, signal.name
            )
            continue
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            logger.error(
                "hook receiver %r of %s is async; hook receivers must be sync functions",
                receiver,
                signal.name,
            )


event_published = _Hook(
    "event_published", doc="An event was published: envelope. Sent before any handler runs."
)
event_handled = _Hook("event_handled", doc="A handler returned: envelope, handler.")
handler_failed = _Hook("handler_failed", doc="A handler raised: envelope, handler, error.")
handler_retrying = _Hook(
    "handler_retrying", doc="A retry is scheduled: envelope, handler, error, attempt, delay."
)
event_dead_lettered = _Hook(
    "event_dead_lettered", doc="A handler gave up on an event: envelope, handler, error."
)
outbox_relayed = _Hook("outbox_relayed", doc="The relay sent a batch: envelopes.")

_PUBLISH_HOOKS = (event_published, event_handled, handler_failed, handler_retrying)
"""The hooks a publish itself sends; while none has a receiver, publishing skips them."""


def _publish_observed() -> bool:
    """Whether any hook that a publish sends has a receiver."""
    return any(signal.receivers for signal in _PUBLISH_HOOKS)
