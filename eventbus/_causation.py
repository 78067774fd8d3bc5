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
from types import MappingProxyType
from typing import Any

from ._envelope import EMPTY_HEADERS, Envelope, check_headers, uuid7

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
_acquire_build = _build_lock.acquire
_release_build = _build_lock.release
_now = datetime.now
_envelope = Envelope._trusted


def full_frame(event: object, route: Any, key: str | None, headers: Any) -> Frame:
    """A frame with a key and headers (the general path); the token is set by the caller."""
    return [event, route, None, None, key, headers]


def envelope_of(frame: Frame) -> Envelope:
    """The frame's envelope, built on first need; its parent's too, for the ids."""
    if len(frame) > ENVELOPE:
        envelope: Envelope | None = frame[ENVELOPE]
        if envelope is not None:
            return envelope
    # parent_of(frame), inline: this runs once per durable or observed publish.
    token: Token[Frame | None] | None = frame[TOKEN]
    parent = None if token is None else token.old_value
    parent_envelope = None if parent is None or parent is _MISSING else envelope_of(parent)
    # acquire/try/finally: cheaper than a with statement, as safe.
    _acquire_build()
    try:
        if len(frame) > ENVELOPE:
            envelope = frame[ENVELOPE]
            if envelope is not None:
                return envelope
            envelope = frame[ENVELOPE] = _build(frame, parent_envelope)
        else:
            envelope = _build(frame, parent_envelope)
            frame.append(envelope)
    finally:
        _release_build()
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
    key = frame[KEY] if len(frame) > KEY else None
    headers = frame[HEADERS] if len(frame) > HEADERS else EMPTY_HEADERS
    if type(headers) is not MappingProxyType:  # what Envelope's converter would do
        headers = check_headers(headers)
    # Every value is valid by construction: the key and headers were checked when they
    # were published (_frame), and now(UTC) is aware. _trusted skips the attrs checks.
    if parent is None:
        return _envelope(
            envelope_id,
            info.name,
            info.version,
            _now(UTC),
            frame[EVENT],
            key,
            envelope_id,
            None,
            headers,
        )
    return _envelope(
        envelope_id,
        info.name,
        info.version,
        _now(UTC),
        frame[EVENT],
        key,
        parent.correlation_id,
        parent.id,
        headers,
    )
