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

from ._envelope import EMPTY_HEADERS, Envelope, uuid7

__all__ = ["Frame", "current_frame", "envelope_of", "full_frame"]

# Frame layout: [event, route, token, envelope, key, headers]
# - route: the bus's route for the event class; route.info is its EventType.
# - token: what setting this frame as current returned; its old_value is the parent frame.
#   Storing the token costs less than reading the parent before setting the frame.
# The untracked-key fast path builds only [event, route, token]: no key, no headers, and
# the envelope is appended when first needed. Every extra slot there is measurable.
Frame = list[Any]
EVENT, ROUTE, TOKEN, ENVELOPE, KEY, HEADERS = range(6)
_MISSING = Token.MISSING

current_frame: ContextVar[Frame | None] = ContextVar("eventbus_current_frame", default=None)

# Two threads that share a frame (a handler that hands work to a thread with a copied
# context) may both need its envelope at once; the lock makes them agree on one id.
_build_lock = threading.Lock()
_now = datetime.now


def full_frame(event: object, route: Any, key: str | None, headers: Any) -> Frame:
    """A frame with a key and headers (the general path); the token is set by the caller."""
    return [event, route, None, None, key, headers]


def envelope_of(frame: Frame) -> Envelope:
    """The frame's envelope, built on first need; its parent's too, for the ids."""
    if len(frame) > ENVELOPE and frame[ENVELOPE] is not None:
        return frame[ENVELOPE]  # type: ignore[no-any-return]
    parent = parent_of(frame)
    parent_envelope = envelope_of(parent) if parent is not None else None
    with _build_lock:
        if len(frame) > ENVELOPE and frame[ENVELOPE] is not None:
            return frame[ENVELOPE]  # type: ignore[no-any-return]
        envelope = _build(frame, parent_envelope)
        if len(frame) > ENVELOPE:
            frame[ENVELOPE] = envelope
        else:
            frame.append(envelope)
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
        key=frame[KEY] if len(frame) > KEY else None,
        correlation_id=envelope_id if parent is None else parent.correlation_id,
        causation_id=None if parent is None else parent.id,
        headers=frame[HEADERS] if len(frame) > HEADERS else EMPTY_HEADERS,
    )
