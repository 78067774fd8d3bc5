"""The pytest plugin, as users get it: loaded by its entry point in a pytest run of their
own (``pytester``, in a subprocess), on an application whose bus is made once, at import.

What it promises: it is there by itself and inert until asked (no optional import, no
thread, nothing changed for tests that ignore it); ``event_bus`` comes from the ini
option or ``EVENTBUS_APP`` and says how to give one otherwise; ``event_bus_capture``
records publishes; ``event_bus_isolation`` leaves no dead letter, outbox row or retry in
flight from one test to the next; ``event_bus_clock`` and ``event_bus_drain`` run
retries, durable ones included, at once and record what they would have waited.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

APP = textwrap.dedent(
    """
    import os

    import tenacity

    from eventbus import (
        EventBus,
        EventRegistry,
        RetryLater,
        RetryPolicy,
        SQLiteDeadLetterStore,
        SQLiteOutbox,
        event,
    )

    REGISTRY = EventRegistry()


    @event("plug.order_placed", registry=REGISTRY)
    class OrderPlaced:
        number: int


    here = os.path.dirname(__file__)
    outbox = SQLiteOutbox(os.path.join(here, "app.sqlite3"))
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        dead_letters=SQLiteDeadLetterStore(os.path.join(here, "dead_letters.sqlite3")),
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(5)),
    )
    attempts = {}
    done = []


    def attempt(name, number):
        attempts[name, number] = attempts.get((name, number), 0) + 1
        return attempts[name, number]


    @bus.subscribe(name="plug.mail", delivery="after_commit")
    def mail(event: OrderPlaced) -> None:
        if event.number < 0:
            raise RuntimeError("the mail server refuses negative orders")
        if event.number >= 100:
            attempt("mail", event.number)
            raise RetryLater(3600)  # a retry an hour away: still in flight at the test's end
        if attempt("mail", event.number) < 3:
            raise RetryLater(30)
        done.append(("mail", event.number))


    @bus.subscribe(name="plug.ledger", delivery="durable")
    def ledger(event: OrderPlaced) -> None:
        if 0 <= event.number < 100 and attempt("ledger", event.number) < 3:
            raise RetryLater(60)
        done.append(("ledger", event.number))
    """
)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: the app above, found by ``eventbus_app``."""
    pytester.makepyfile(app=APP)
    pytester.makeini("[pytest]\neventbus_app = app:bus\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.delenv("EVENTBUS_APP", raising=False)
    return pytester


def test_the_plugin_is_loaded_by_its_entry_point_and_is_inert(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys
        import threading


        def test_nothing_optional_is_imported_and_nothing_runs(request):
            assert request.config.pluginmanager.hasplugin("eventbus")
            optional = {"sqlalchemy", "redis", "aio_pika", "nats", "aiokafka", "fastapi",
                        "starlette", "flask", "django", "eventbus_contrib"}
            assert optional.isdisjoint(sys.modules)
            assert threading.active_count() == 1
        """
    )
    result = pytester.runpytest_subprocess("-W", "error")
    result.assert_outcomes(passed=1)
    fixtures = pytester.runpytest_subprocess("--fixtures")
    fixtures.stdout.fnmatch_lines(["event_bus -- *", "event_bus_capture -- *"])


def test_without_a_bus_the_fixture_says_how_to_give_one(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EVENTBUS_APP", raising=False)
    pytester.makepyfile(test_it="def test_it(event_bus_capture):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*eventbus_app*EVENTBUS_APP*event_bus fixture in conftest.py*"])
    assert result.ret != 0


def test_capture_records_the_publishes_of_the_test(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_capture="""
        import app


        def test_it(event_bus_capture, event_bus_isolation, event_bus_drain):
            app.bus.publish(app.OrderPlaced(number=7), key="7")
            event_bus_drain()
            event_bus_capture.assert_published(app.OrderPlaced, number=7, times=1)
            assert event_bus_capture.envelopes[0].key == "7"
        """
    )
    project.runpytest_subprocess("-W", "error").assert_outcomes(passed=1)


def test_retries_run_at_once_and_say_how_long_they_would_have_waited(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_clock="""
        import app


        def test_it(event_bus_isolation, event_bus_clock, event_bus_drain):
            app.bus.publish(app.OrderPlaced(number=1))
            event_bus_drain()  # after-commit and durable retries, to their end
            assert sorted(app.done) == [("ledger", 1), ("mail", 1)]
            # Two RetryLater(30) of the mail, two RetryLater(60) of the durable ledger:
            # no real time, and exactly these waits.
            assert sorted(event_bus_clock.waits) == [30.0, 30.0, 60.0, 60.0]
            assert event_bus_clock.now == 180.0
            event_bus_clock.advance(20)
            assert event_bus_clock() == 200.0
            assert app.bus.outbox.status().pending == 0
        """
    )
    result = project.runpytest_subprocess("-W", "error", "--durations=0", "-vv")
    result.assert_outcomes(passed=1)


LEFTOVERS = """
import time
import uuid

import app
from eventbus import uuid7
from eventbus.outbox import PendingRow


def test_a_leaves_everything_behind(event_bus):
    app.bus.publish(app.OrderPlaced(number=-1))  # its mail is dead-lettered
    app.bus.drain(timeout=30)
    app.bus.publish(app.OrderPlaced(number=100))  # its mail waits an hour for a retry
    # The mail's first attempt runs on the bus's thread: let it happen within this test.
    deadline = time.monotonic() + 30
    while ("mail", 100) not in app.attempts and time.monotonic() < deadline:
        time.sleep(0.01)
    # A row no relay took yet, and an inbox mark.
    app.outbox.write_now([PendingRow(uuid7(), "plug.order_placed", "plug.ledger", None, b"{}")])
    app.outbox.mark("plug.ledger", uuid.uuid4())
    assert event_bus.dead_letters.count() == 1


def test_b_starts_clean({fixture}):
    bus = app.bus
    assert bus.dead_letters.count() == 0
    assert bus.outbox.status().pending == 0
    bus.drain(timeout=5)  # nothing in flight: the hour-long retry of test_a is gone
    assert app.attempts.get(("mail", 100)) == 1
"""


def test_isolation_leaves_nothing_from_one_test_to_the_next(project: pytest.Pytester) -> None:
    project.makepyfile(test_leftovers=LEFTOVERS.replace("{fixture}", "event_bus_isolation"))
    project.runpytest_subprocess("-W", "error", "-p", "no:randomly").assert_outcomes(passed=2)


def test_without_isolation_the_next_test_sees_the_leftovers(project: pytest.Pytester) -> None:
    project.makepyfile(test_leftovers=LEFTOVERS.replace("{fixture}", "event_bus"))
    result = project.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    # test_a's dead letter (and, if the relay took test_a's row meanwhile, one more).
    result.stdout.fnmatch_lines(["*test_b_starts_clean - AssertionError: assert * == 0"])


def test_the_bus_may_come_from_a_conftest_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from eventbus import EventBus, EventRegistry, event

        REGISTRY = EventRegistry()


        @event("plug.pinged", registry=REGISTRY)
        class Pinged:
            n: int


        @pytest.fixture
        def event_bus():
            with EventBus(registry=REGISTRY) as bus:
                yield bus
        """
    )
    pytester.makepyfile(
        test_it="""
        from conftest import Pinged


        def test_it(event_bus, event_bus_capture):
            event_bus.publish(Pinged(n=1))
            assert event_bus_capture.of_type(Pinged) == [Pinged(n=1)]
        """
    )
    pytester.runpytest_subprocess("-W", "error").assert_outcomes(passed=1)
