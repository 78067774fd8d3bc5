"""eventbus's pytest plugin: fixtures for testing code that publishes events.

pytest loads it by itself (the ``pytest11`` entry point of the eventbus distribution).
It is inert until a test asks for one of its fixtures: no hook changes a run, and it
imports nothing beyond eventbus's own core (no integration, no extra).

- ``event_bus``: the bus under test. By default the one named by the ``eventbus_app``
  ini option (``module:attribute``, as ``eventbus --app`` takes it) or ``EVENTBUS_APP``;
  override the fixture in your ``conftest.py`` to give another (a Flask app's, a fresh
  one per test).
- ``event_bus_capture``: a ``CapturedEvents`` recording every publish on ``event_bus``
  during the test (``assert_published``, ``of_type``, ...).
- ``event_bus_isolation``: ``event_bus`` with a clean state before the test and after it:
  nothing in flight, no dead letters, no outbox rows, no inbox marks, whatever another
  test left (``eventbus.testing.reset_bus``). For a bus made once at import.
- ``event_bus_clock``: a ``FakeClock`` that is ``event_bus``'s sleep during the test: the
  waits between retries take no time, durable ones included, and are recorded.
- ``event_bus_drain``: a function that waits until everything published is handled,
  durable retries to their end (under ``event_bus_clock``, so at once), and raises
  ``TimeoutError`` naming what is unfinished after ``timeout`` seconds (30 by default).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from eventbus import EventBus
    from eventbus.testing import CapturedEvents, FakeClock

__all__ = [
    "event_bus",
    "event_bus_capture",
    "event_bus_clock",
    "event_bus_drain",
    "event_bus_isolation",
    "pytest_addoption",
]

_INI = "eventbus_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _INI,
        "the bus the eventbus fixtures use, as module:attribute (like eventbus --app)",
        default="",
    )


@pytest.fixture
def event_bus(request: pytest.FixtureRequest) -> EventBus:
    """The application's bus: ``eventbus_app`` in the ini file, or ``EVENTBUS_APP``.

    Override this fixture in ``conftest.py`` to use another bus.
    """
    spec = str(request.config.getini(_INI)) or os.environ.get("EVENTBUS_APP", "")
    if not spec:
        raise pytest.UsageError(
            'the eventbus fixtures need a bus: set eventbus_app = "myapp.events:bus" '
            "in pytest's ini options ([tool.pytest.ini_options] of pyproject.toml), or "
            "EVENTBUS_APP, or define an event_bus fixture in conftest.py that returns it"
        )
    from eventbus import EventBus  # noqa: PLC0415 - only when a test asks for a bus
    from eventbus._cli_app import UsageError, load_bus  # noqa: PLC0415

    try:
        bus = load_bus(spec)
    except UsageError as error:
        raise pytest.UsageError(f"eventbus_app ({spec}): {error}") from None
    assert isinstance(bus, EventBus)
    return bus


@pytest.fixture
def event_bus_capture(event_bus: EventBus) -> Iterator[CapturedEvents]:
    """Every publish on ``event_bus`` during the test, in order; handlers still run."""
    from eventbus.testing import capture_events  # noqa: PLC0415

    with capture_events(event_bus) as captured:
        yield captured


@pytest.fixture
def event_bus_isolation(event_bus: EventBus) -> Iterator[EventBus]:
    """``event_bus``, clean before the test and after it: no work in flight, dead letters,
    outbox rows or inbox marks left from another test."""
    from eventbus.testing import reset_bus  # noqa: PLC0415

    reset_bus(event_bus)
    yield event_bus
    if not event_bus.closed:
        reset_bus(event_bus)


@pytest.fixture
def event_bus_clock(event_bus: EventBus) -> Iterator[FakeClock]:
    """A fake clock as ``event_bus``'s sleep during the test: retries wait no time."""
    from eventbus.testing import use_clock  # noqa: PLC0415

    with use_clock(event_bus) as clock:
        yield clock


@pytest.fixture
def event_bus_drain(event_bus: EventBus, event_bus_clock: FakeClock) -> Callable[..., None]:
    """``drain(timeout=30.0)``: wait until everything published on ``event_bus`` is
    handled, durable retries to their end (at once: the fake clock is its sleep)."""
    del event_bus_clock  # installed for the test: the waits take no time

    def drain(timeout: float = 30.0) -> None:
        event_bus.drain(timeout)

    return drain
