"""``bus.drain()`` waits for durable retries, on every outbox store.

A durable row that failed and waits in the outbox for its next attempt is in flight: a
test that drains must see the handler's final outcome (handled, or dead-lettered once
the policy gives up), whatever the retry policy's waits. With ``EventBus(sleep=...)`` the
relay hands each wait to the injected sleep and the row is due at once; without it, drain
waits for the row's time, bounded by its timeout, and says what still waits when that
runs out. Runs on the stdlib ``SQLiteOutbox`` and on ``SQLAlchemyOutbox`` on SQLite,
PostgreSQL and MariaDB (the ``outbox`` harness, tests/contract/conftest.py).
"""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tenacity

from eventbus import EventBus, EventRegistry, RetryLater, RetryPolicy, event

REGISTRY = EventRegistry()


@event("drain_retries.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


class BoomError(Exception):
    pass


pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite3", "sqlite", "postgresql", "mariadb"], indirect=True
)

# Waits no test could sit through: only the injected sleep makes them instant.
LONG_WAITS = RetryPolicy(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_fixed(600))


@pytest.fixture
def make_bus(outbox: Any) -> Iterator[Callable[..., EventBus]]:
    """Buses on the test's store (relayed in this process); closed at the end."""
    made: list[EventBus] = []

    def make(**options: Any) -> EventBus:
        bus = EventBus(registry=REGISTRY, outbox=outbox.store, **options)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


def test_drain_sees_the_final_outcome_of_durable_retries(
    make_bus: Callable[..., EventBus], outbox: Any
) -> None:
    slept: list[float] = []
    bus = make_bus(retry=LONG_WAITS, sleep=slept.append)
    flaky_attempts: list[int] = []
    doomed_attempts: list[int] = []

    @bus.subscribe(name="flaky", delivery="durable")
    def flaky(event: OrderPlaced) -> None:
        flaky_attempts.append(event.number)
        if len(flaky_attempts) < 3:
            raise BoomError("not yet")

    @bus.subscribe(name="doomed", delivery="durable")
    def doomed(event: OrderPlaced) -> None:
        doomed_attempts.append(event.number)
        raise BoomError("never")

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=60)

    assert flaky_attempts == [1, 1, 1]  # handled on its third attempt
    assert doomed_attempts == [1, 1, 1, 1]  # the policy gave up after four
    [letter] = bus.dead_letters.list()
    assert (letter.handler, letter.attempts) == ("doomed", 4)
    assert "never" in letter.message
    assert slept == [600.0] * 5  # every wait went to the injected sleep
    assert outbox.outbox_rows("id") == []


def test_drain_waits_for_a_retry_time_in_the_database(
    make_bus: Callable[..., EventBus], outbox: Any
) -> None:
    """No injected sleep: the row waits in the outbox for its own time, and drain with it."""
    bus = make_bus()
    attempts: list[int] = []

    @bus.subscribe(name="later", delivery="durable")
    def later(event: OrderPlaced) -> None:
        attempts.append(event.number)
        if len(attempts) == 1:
            raise RetryLater(0.3, "the service is warming up")

    bus.publish(OrderPlaced(number=1))
    bus.drain(timeout=60)

    assert attempts == [1, 1]
    assert bus.dead_letters.count() == 0
    assert outbox.outbox_rows("id") == []


def test_a_drain_that_runs_out_of_time_says_what_still_waits(
    make_bus: Callable[..., EventBus], outbox: Any
) -> None:
    bus = make_bus()
    attempts: list[int] = []

    @bus.subscribe(name="patient", delivery="durable")
    def patient(event: OrderPlaced) -> None:
        attempts.append(event.number)
        raise RetryLater(600, "the partner is down for maintenance")

    bus.publish(OrderPlaced(number=1))
    with pytest.raises(TimeoutError) as caught:
        bus.drain(timeout=1)

    message = str(caught.value)
    assert "1 outbox row waiting for a retry (patient: 1, next in" in message
    assert "after 1s" in message
    assert "running" not in message  # drain's own steps are not work of the bus
    assert attempts == [1]
    [(row_attempts,)] = outbox.outbox_rows("attempts")
    assert row_attempts == 1  # still there, for the next attempt


async def test_adrain_sees_the_final_outcome_of_durable_retries_on_the_applications_loop(
    make_bus: Callable[..., EventBus], outbox: Any
) -> None:
    slept: list[float] = []
    bus = make_bus(retry=LONG_WAITS, sleep=slept.append)
    attempts: list[int] = []

    @bus.subscribe(name="flaky", delivery="durable")
    async def flaky(event: OrderPlaced) -> None:
        attempts.append(event.number)
        if len(attempts) < 4:
            raise BoomError("not yet")

    await bus.astart()
    await bus.apublish(OrderPlaced(number=7))
    await bus.adrain(timeout=60)
    assert attempts == [7, 7, 7, 7]
    assert slept == [600.0] * 3
    assert bus.dead_letters.count() == 0
    await bus.aclose()
    assert outbox.outbox_rows("id") == []
