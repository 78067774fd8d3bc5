"""Helpers for testing code that publishes events.

``capture_events(bus)`` records the envelope of every publish on ``bus`` while the
``with`` block runs, nested publishes included, in the order they were published::

    from eventbus.testing import capture_events

    def test_placing_an_order_publishes_order_placed():
        with capture_events(bus) as captured:
            place_order(bus, order_id="o-1")
        captured.assert_published(OrderPlaced, order_id="o-1")
        assert captured.events == [OrderPlaced(order_id="o-1", total=Decimal("9.90"))]

Handlers still run while a capture is active: a capture observes, it does not replace.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._envelope import Envelope

__all__ = ["CapturedEvents", "capture_events"]

E = TypeVar("E")


class CapturedEvents:
    """What a ``capture_events`` block saw: envelopes in publish order."""

    def __init__(self) -> None:
        self._envelopes: list[Envelope] = []
        self._lock = threading.Lock()

    def _record(self, envelope: Envelope) -> None:
        with self._lock:
            self._envelopes.append(envelope)

    @property
    def envelopes(self) -> list[Envelope]:
        """Every captured envelope, in publish order (a copy)."""
        with self._lock:
            return list(self._envelopes)

    @property
    def events(self) -> list[Any]:
        """Every captured event, in publish order."""
        return [envelope.event for envelope in self.envelopes]

    def of_type(self, event_type: type[E]) -> list[E]:
        """The captured events that are instances of ``event_type`` (subclasses too)."""
        return [event for event in self.events if isinstance(event, event_type)]

    def envelopes_of(self, event_type: type[Any]) -> list[Envelope]:
        """The captured envelopes whose event is an instance of ``event_type``."""
        return [env for env in self.envelopes if isinstance(env.event, event_type)]

    def assert_published(
        self, event_type: type[E], /, *, times: int | None = None, **fields: Any
    ) -> E:
        """Assert an event of ``event_type`` with these field values was published.

        Returns the last match. With ``times`` (>= 1), assert exactly that many matched;
        for "never", use ``assert_not_published``.
        """
        if times is not None and (isinstance(times, bool) or times < 1):
            raise ValueError(
                f"times must be an int >= 1, got {times!r}; use assert_not_published() "
                "to assert that nothing matched"
            )
        matches = [event for event in self.of_type(event_type) if _has_fields(event, fields)]
        wanted = f"{event_type.__qualname__}{_describe(fields)}"
        if not matches:
            raise AssertionError(f"no {wanted} was published; published: {self._summary()}")
        if times is not None and len(matches) != times:
            raise AssertionError(
                f"{wanted} was published {len(matches)} times, expected {times}; "
                f"published: {self._summary()}"
            )
        return matches[-1]

    def assert_not_published(self, event_type: type[Any], /, **fields: Any) -> None:
        """Assert no event of ``event_type`` (with these field values, if given) was published."""
        matches = [event for event in self.of_type(event_type) if _has_fields(event, fields)]
        if matches:
            raise AssertionError(
                f"{event_type.__qualname__}{_describe(fields)} was published "
                f"{len(matches)} times: {matches!r}"
            )

    def clear(self) -> None:
        """Forget what was captured so far."""
        with self._lock:
            self._envelopes.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._envelopes)

    def __iter__(self) -> Iterator[Envelope]:
        return iter(self.envelopes)

    def _summary(self) -> str:
        events = self.events
        return ", ".join(repr(event) for event in events) if events else "nothing"


@contextmanager
def capture_events(bus: EventBus) -> Iterator[CapturedEvents]:
    """Record the envelope of every publish on ``bus`` inside the block."""
    captured = CapturedEvents()
    bus._attach_capture(captured)
    try:
        yield captured
    finally:
        bus._detach_capture(captured)


_MISSING = object()


def _has_fields(event: object, fields: dict[str, Any]) -> bool:
    return all(getattr(event, name, _MISSING) == value for name, value in fields.items())


def _describe(fields: dict[str, Any]) -> str:
    if not fields:
        return ""
    return "(" + ", ".join(f"{name}={value!r}" for name, value in fields.items()) + ")"
