"""Causation: which publication a handler is handling right now, and lazy envelopes.

While a handler runs, a contextvar holds a *frame* for the publication it handles. A
publish made inside the handler reads it to set ``causation_id`` (the frame's envelope
id) and ``correlation_id`` (inherited). contextvars make this correct across threads
(each has its own context) and asyncio tasks (each runs in a copy of its creator's).

The frame is a plain list, not an object, because it is built on the publish hot path
whenever causation is tracked: a list literal costs a fraction of an instance. Its
envelope is built lazily, only when something needs it (a nested publish whose own
envelope is needed, a capture, a hook), so a publish that nobody links to never pays for
a UUID or a timestamp. The lazily made id is stored in the frame, which every context
copy shares, so all children of one publication agree on its id.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from ._envelope import Envelope, uuid7

__all__ = ["Frame", "current_frame", "envelope_of"]

# Frame layout: [event, key, headers, token, envelope or None, route]
# - token: what setting this frame as current returned; its old_value is the parent frame.
#   Keeping the token instead of reading the parent first saves a contextvar read.
# - route: the bus's route for the event class; route.info is its EventType.
Frame = list[Any]
EVENT, KEY, HEADERS, TOKEN, ENVELOPE, ROUTE = range(6)
_MISSING = Token.MISSING

current_frame: ContextVar[Frame | None] = ContextVar("eventbus_current_frame", default=None)

# Two threads that share a frame (a handler that hands work to a thread with a copied
# context) may both need its envelope at once; the lock makes them agree on one id.
_build_lock = threading.Lock()
_now = datetime.now


def envelope_of(frame: Frame) -> Envelope:
    """The frame's envelope, built on first need; its parent's too, for the ids."""
    envelope: Envelope | None = frame[ENVELOPE]
    if envelope is not None:
        return envelope
    parent = parent_of(frame)
    parent_envelope = envelope_of(parent) if parent is not None else None
    with _build_lock:
        envelope = frame[ENVELOPE]
        if envelope is None:
            envelope = _build(frame, parent_envelope)
            frame[ENVELOPE] = envelope
    return envelope


def parent_of(frame: Frame) -> Frame | None:
    """The frame that was current when ``frame`` was published: its cause."""
    token: Token[Frame | None] | None = frame[TOKEN]
    if token is None:
        return None
    parent = token.old_value
    return None if parent is _MISSING else parent


def _build(frame: Frame, parent: Envelope | None) -> Envelope:
    envelope_id = uuid7()
    info = frame[ROUTE].info
    return Envelope(
        id=envelope_id,
        name=info.name,
        version=info.version,
        occurred_at=_now(UTC),
        event=frame[EVENT],
        key=frame[KEY],
        correlation_id=envelope_id if parent is None else parent.correlation_id,
        causation_id=None if parent is None else parent.id,
        headers=frame[HEADERS],
    )
