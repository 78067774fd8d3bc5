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

``FakeClock`` and ``use_clock(bus, clock)`` make the waits between retries (in-process and
durable ones alike) take no time, recording each; ``reset_bus(bus)`` gives a bus a clean
state (no work in flight, no dead letters, no outbox rows, no inbox marks) between tests,
also a bus made once at import. The pytest plugin (``eventbus.pytest_plugin``, loaded by
pytest on its own) offers all of these as fixtures.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from . import errors as _errors
from . import typing as _typing

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._envelope import Envelope

__all__ = ["CapturedEvents", "FakeClock", "capture_events", "reset_bus", "use_clock"]

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


class FakeClock:
    """Time for tests: waits take none, and the clock moves by what they would have taken.

    ``use_clock(bus, clock)`` makes it the bus's sleep: every wait between retries (an
    after-commit handler's, an inline one's with a policy, a durable row's, which the
    relay then makes due at once) calls ``clock.sleep(seconds)``, which returns at once,
    adds the seconds to ``clock.now`` and records them in ``clock.waits``. So retries run
    instantly and in the order they would have, and a test can say how long they would
    have waited (``assert clock.waits == [30.0]`` for a ``RetryLater(30)``).

    ``advance(seconds)`` moves the clock for code of yours that reads it (``clock.now``,
    or the clock itself, called like ``time.monotonic``). Retry policies bounded by time
    alone (``stop_after_delay``) measure real time, which waits under this clock do not
    take: bound them by attempts too, or a test's retries only end with its drain's
    timeout.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._now = float(start)
        self._waits: list[float] = []

    @property
    def now(self) -> float:
        """Seconds on this clock: where it started, plus every wait and advance."""
        with self._lock:
            return self._now

    @property
    def waits(self) -> list[float]:
        """Every wait the bus asked for, in order (a copy)."""
        with self._lock:
            return list(self._waits)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Record a wait of ``seconds`` and move the clock by it, at once."""
        seconds = _seconds(seconds, "a wait")
        with self._lock:
            self._waits.append(seconds)
            self._now += seconds

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        seconds = _seconds(seconds, "advance()")
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now}, {len(self.waits)} waits>"


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _errors.ConfigurationError(f"{what} takes seconds (a number), got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise _errors.ConfigurationError(f"{what} takes seconds >= 0, got {value!r}")
    return seconds


@contextmanager
def use_clock(bus: EventBus, clock: FakeClock | None = None) -> Iterator[FakeClock]:
    """Make ``clock`` (a new ``FakeClock`` if none) the bus's sleep inside the block;
    the bus's own sleep (``EventBus(sleep=...)``, or real waits) comes back after it."""
    clock = FakeClock() if clock is None else clock
    runtime = bus._runtime
    before = bus._sleep, runtime._injected_sleep
    bus._sleep = runtime._injected_sleep = clock.sleep
    try:
        yield clock
    finally:
        bus._sleep, runtime._injected_sleep = before


def reset_bus(bus: EventBus) -> None:
    """Give ``bus`` a clean state, as a fresh process would find it: for tests.

    What is in flight is stopped at once (after-commit deliveries and their retries are
    cancelled; the relay and the worker let go of what they hold), then every dead
    letter, outbox row and inbox mark is deleted. The bus stays open: the next publish
    (or ``start()``) starts it again. Its outbox must be able to clear itself
    (``eventbus.typing.SupportsClear``: the built-in stores can). Handlers, hooks and
    settings are left as they are.
    """
    bus._life.check_open()
    outbox = bus.outbox
    if outbox is not None and not isinstance(outbox, _typing.SupportsClear):
        raise _errors.ConfigurationError(
            f"reset_bus() cannot empty {outbox!r}: its outbox store has no clear() "
            "(eventbus.typing.SupportsClear); add one, or give tests a store that has it"
        )
    runtime = bus._runtime
    timeout = runtime._shutdown_timeout
    runtime._shutdown_timeout = 0.0  # cancel what is left: it belongs to another test
    try:
        with _quiet_stop():
            bus.stop()
    finally:
        runtime._shutdown_timeout = timeout
    relay = bus._life.relay
    if relay is not None:
        with relay._waiting_lock:
            relay._waiting.clear()  # the rows it waited for are about to go
    bus.dead_letters.purge(all=True)
    if outbox is not None:
        outbox.clear()


@contextmanager
def _quiet_stop() -> Iterator[None]:
    """A stop that cancels leftovers on purpose says nothing about them."""
    import logging  # noqa: PLC0415 - only here

    logger = logging.getLogger("eventbus.bus")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(TimeoutError):
            yield
    finally:
        logger.setLevel(level)
