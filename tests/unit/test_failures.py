"""Failures as first-class: retries, directives, dead letters, replay, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import tenacity

from eventbus import (
    BusClosedError,
    DeliveryUnavailableError,
    Envelope,
    EventBus,
    EventRegistry,
    RejectEvent,
    ReplayInProgressError,
    RetryLater,
    RetryPolicy,
    SkipEvent,
    event,
    hooks,
)
from eventbus.deadletters import MemoryDeadLetterStore
from eventbus.errors import DeadLetterNotFoundError

REGISTRY = EventRegistry()


@event("failures.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


@event("failures.receipt_sent", registry=REGISTRY)
class ReceiptSent:
    order_id: str


class BoomError(Exception):
    pass


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def bus(slept: list[float]) -> Iterator[EventBus]:
    bus = EventBus(
        registry=REGISTRY,
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.25)),
        sleep=slept.append,
    )
    yield bus
    bus.close()


@pytest.fixture
def recorded() -> Iterator[dict[str, list[dict[str, object]]]]:
    seen: dict[str, list[dict[str, object]]] = {
        "retrying": [],
        "failed": [],
        "dead": [],
        "handled": [],
    }
    receivers = {
        "retrying": lambda _bus, **kw: seen["retrying"].append(kw),
        "failed": lambda _bus, **kw: seen["failed"].append(kw),
        "dead": lambda _bus, **kw: seen["dead"].append(kw),
        "handled": lambda _bus, **kw: seen["handled"].append(kw),
    }
    signals = {
        "retrying": hooks.handler_retrying,
        "failed": hooks.handler_failed,
        "dead": hooks.event_dead_lettered,
        "handled": hooks.event_handled,
    }
    for key, signal in signals.items():
        signal.connect(receivers[key], weak=False)
    try:
        yield seen
    finally:
        for key, signal in signals.items():
            signal.disconnect(receivers[key])


def test_one_failing_handler_is_isolated_retried_and_dead_lettered(bus, slept, recorded):
    effects: list[str] = []
    attempts: list[int] = []

    @bus.subscribe(name="reserve", delivery="after_commit")
    def reserve(event: OrderPlaced) -> None:
        effects.append("reserve")

    @bus.subscribe(name="charge", delivery="after_commit")
    def charge(event: OrderPlaced) -> None:
        attempts.append(1)
        raise BoomError("card service down for postgresql://shop:s3cret@db.internal/shop")

    @bus.subscribe(name="email", delivery="after_commit")
    async def email(event: OrderPlaced) -> None:
        effects.append("email")

    bus.publish(OrderPlaced(order_id="o-1"), key="o-1")  # never raises: failures are isolated
    bus.drain(timeout=10)

    assert sorted(effects) == ["email", "reserve"]  # each exactly once
    assert len(attempts) == 3
    assert slept == [0.25, 0.25]
    assert [r["attempt"] for r in recorded["retrying"]] == [1, 2]
    assert {r["handler"] for r in recorded["retrying"]} == {"charge"}
    assert [r["handler"] for r in recorded["failed"]] == ["charge"] * 3
    assert [r["handler"] for r in recorded["dead"]] == ["charge"]

    [letter] = bus.dead_letters.list()
    assert letter.handler == "charge"
    assert letter.event_name == "failures.order_placed"
    assert letter.attempts == 3
    assert letter.error_type.endswith("test_failures.BoomError")
    assert "s3cret" not in letter.message
    assert "s3cret" not in letter.traceback
    assert "postgresql://shop:***@db.internal/shop" in letter.message
    assert "in charge" in letter.traceback
    assert letter.first_failed_at <= letter.last_failed_at <= datetime.now(UTC)
    envelope = letter.envelope(bus.codec)
    assert envelope.event == OrderPlaced(order_id="o-1")
    assert envelope.key == "o-1"
    assert envelope.id == recorded["dead"][0]["envelope"].id
    assert recorded["dead"][0]["letter"] == letter


def test_failures_of_deferred_handlers_never_reach_the_publisher(bus):
    @bus.subscribe(name="explode", delivery="after_commit", retry=RetryPolicy.never())
    def explode(event: OrderPlaced) -> None:
        raise BoomError("nope")

    bus.publish(OrderPlaced(order_id="o-2"))
    bus.drain(timeout=10)
    assert bus.dead_letters.count(handler="explode") == 1


def test_publish_returns_before_a_slow_after_commit_handler_finishes(bus):
    started, release = threading.Event(), threading.Event()
    where: list[str] = []

    @bus.subscribe(name="slow", delivery="after_commit")
    def slow(event: OrderPlaced) -> None:
        where.append(threading.current_thread().name)
        started.set()
        release.wait(10)

    bus.publish(OrderPlaced(order_id="o-3"))
    assert started.wait(10)
    assert bus._runtime.pending == 1  # still running while publish has long returned
    release.set()
    bus.drain(timeout=10)
    assert where[0].startswith("eventbus-handler")


def test_retry_later_waits_its_delay(bus, slept):
    calls: list[int] = []

    @bus.subscribe(name="later", delivery="after_commit")
    def later(event: OrderPlaced) -> None:
        calls.append(1)
        if len(calls) < 2:
            raise RetryLater(42, "rate limited")

    bus.publish(OrderPlaced(order_id="o-4"))
    bus.drain(timeout=10)
    assert calls == [1, 1]
    assert slept == [42]
    assert bus.dead_letters.count() == 0


def test_reject_event_goes_straight_to_the_dead_letters(bus, slept):
    calls: list[int] = []

    @bus.subscribe(name="picky", delivery="after_commit")
    def picky(event: OrderPlaced) -> None:
        calls.append(1)
        raise RejectEvent("order id is malformed")

    bus.publish(OrderPlaced(order_id="o-5"))
    bus.drain(timeout=10)
    assert calls == [1]
    assert slept == []
    [letter] = bus.dead_letters.list()
    assert letter.attempts == 1
    assert letter.message == "rejected: order id is malformed"


def test_skip_event_counts_as_handled(bus, recorded):
    @bus.subscribe(name="skipper", delivery="after_commit")
    def skipper(event: OrderPlaced) -> None:
        raise SkipEvent

    @bus.subscribe(name="inline_skipper")
    def inline_skipper(event: OrderPlaced) -> None:
        raise SkipEvent

    bus.publish(OrderPlaced(order_id="o-6"))  # the inline SkipEvent does not reach us either
    bus.drain(timeout=10)
    assert bus.dead_letters.count() == 0
    assert {r["handler"] for r in recorded["handled"]} == {"skipper", "inline_skipper"}


def test_inline_handlers_may_opt_in_to_retries(bus, slept):
    calls: list[int] = []

    @bus.subscribe(
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_fixed(1))
    )
    def flaky(event: OrderPlaced) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("try again")

    bus.publish(OrderPlaced(order_id="o-7"))
    assert calls == [1, 1, 1]
    assert slept == [1, 1]


def test_an_inline_handlers_final_failure_reaches_the_caller(bus, slept):
    calls: list[int] = []

    @bus.subscribe(
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_fixed(1))
    )
    def always(event: OrderPlaced) -> None:
        calls.append(1)
        raise BoomError("still down")

    with pytest.raises(BoomError, match="still down"):
        bus.publish(OrderPlaced(order_id="o-8"))
    assert calls == [1, 1]
    assert slept == [1]
    assert bus.dead_letters.count() == 0  # inline failures belong to the caller


def test_inline_retries_under_apublish(bus, slept):
    calls: list[int] = []

    @bus.subscribe(
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(2))
    )
    async def flaky(event: OrderPlaced) -> None:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError

    asyncio.run(bus.apublish(OrderPlaced(order_id="o-9")))
    assert calls == [1, 1]
    assert slept == [2]


def test_replay_success_removes_the_letter_and_runs_the_handler_once(bus):
    healthy = threading.Event()
    done: list[str] = []

    @bus.subscribe(name="ship", delivery="after_commit", retry=RetryPolicy.never())
    def ship(event: OrderPlaced) -> None:
        if not healthy.is_set():
            raise BoomError("warehouse offline")
        done.append(event.order_id)

    bus.publish(OrderPlaced(order_id="o-10"))
    bus.drain(timeout=10)
    [letter] = bus.dead_letters.list()
    healthy.set()
    result = bus.replay(letter.id)
    assert result.ok
    assert result.outcome == "replayed"
    assert result.handler == "ship"
    assert done == ["o-10"]
    assert bus.dead_letters.count() == 0
    with pytest.raises(DeadLetterNotFoundError):
        bus.replay(letter.id)


def test_replay_failure_keeps_the_letter_with_the_new_error(bus):
    errors = iter([BoomError("first"), BoomError("second")])

    @bus.subscribe(name="ship", delivery="after_commit", retry=RetryPolicy.never())
    def ship(event: OrderPlaced) -> None:
        raise next(errors)

    bus.publish(OrderPlaced(order_id="o-11"))
    bus.drain(timeout=10)
    [letter] = bus.dead_letters.list()
    result = bus.replay(str(letter.id))
    assert not result.ok
    assert result.error is not None
    assert result.error.endswith("BoomError: second")
    [again] = bus.dead_letters.list()
    assert again.id == letter.id
    assert again.message == "second"
    assert again.attempts == 2
    assert again.last_failed_at >= letter.last_failed_at


def test_two_concurrent_replays_run_the_handler_once(bus):
    failing = threading.Event()
    failing.set()
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @bus.subscribe(name="ship", delivery="after_commit", retry=RetryPolicy.never())
    def ship(event: OrderPlaced) -> None:
        if failing.is_set():
            raise BoomError("down")
        runs.append(1)
        entered.set()
        release.wait(10)

    bus.publish(OrderPlaced(order_id="o-12"))
    bus.drain(timeout=10)
    [letter] = bus.dead_letters.list()
    failing.clear()
    outcomes: list[object] = []

    def replay() -> None:
        try:
            outcomes.append(bus.replay(letter.id))
        except ReplayInProgressError as exc:
            outcomes.append(exc)

    first = threading.Thread(target=replay)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=replay)
    second.start()
    second.join(10)
    release.set()
    first.join(10)
    assert runs == [1]
    assert any(isinstance(o, ReplayInProgressError) for o in outcomes)
    assert any(getattr(o, "ok", False) for o in outcomes)
    assert bus.dead_letters.count() == 0


def test_replay_of_an_unknown_handler_leaves_the_letter(slept):
    store = MemoryDeadLetterStore()
    first = EventBus(registry=REGISTRY, dead_letters=store, sleep=slept.append)

    @first.subscribe(name="gone", delivery="after_commit", retry=RetryPolicy.never())
    def gone(event: OrderPlaced) -> None:
        raise BoomError("x")

    first.publish(OrderPlaced(order_id="o-13"))
    first.close()
    second = EventBus(registry=REGISTRY, dead_letters=store)
    [letter] = store.list()
    with pytest.raises(ValueError, match="'gone', which is not subscribed"):
        second.replay(letter.id)
    assert store.count() == 1
    second.subscribe(OrderPlaced, name="gone", delivery="after_commit")(lambda e: None)
    assert second.replay(letter.id).ok  # the failed attempt did not leave it claimed
    second.close()


def test_replay_of_a_bad_id_is_a_clear_error(bus):
    with pytest.raises(ValueError, match="not a dead letter id"):
        bus.replay("not-a-uuid")
    with pytest.raises(DeadLetterNotFoundError):
        bus.replay(uuid.uuid4())


def test_a_nested_publish_in_an_after_commit_handler_links_to_its_cause(bus):
    seen: dict[str, Envelope] = {}

    @bus.subscribe(name="send_receipt", delivery="after_commit")
    def send_receipt(event: OrderPlaced, envelope: Envelope) -> None:
        seen["placed"] = envelope
        bus.publish(ReceiptSent(order_id=event.order_id))

    @bus.subscribe(name="audit")
    def audit(event: ReceiptSent, envelope: Envelope) -> None:
        seen["receipt"] = envelope

    bus.publish(OrderPlaced(order_id="o-14"))
    bus.drain(timeout=10)
    assert seen["receipt"].causation_id == seen["placed"].id
    assert seen["receipt"].correlation_id == seen["placed"].correlation_id


def test_async_after_commit_handlers_run_on_the_application_loop():
    async def main() -> tuple[asyncio.AbstractEventLoop, list[asyncio.AbstractEventLoop]]:
        loops: list[asyncio.AbstractEventLoop] = []
        async with EventBus(registry=REGISTRY) as bus:

            @bus.subscribe(name="notify", delivery="after_commit")
            async def notify(event: OrderPlaced) -> None:
                await asyncio.sleep(0)
                loops.append(asyncio.get_running_loop())

            await bus.apublish(OrderPlaced(order_id="o-15"))
            await bus.adrain(timeout=10)
        return asyncio.get_running_loop(), loops

    loop, loops = asyncio.run(main())
    assert loops == [loop]


def test_close_finishes_deliveries_in_flight():
    bus = EventBus(registry=REGISTRY)
    done: list[str] = []

    @bus.subscribe(name="slowish", delivery="after_commit")
    def slowish(event: OrderPlaced) -> None:
        time.sleep(0.2)
        done.append(event.order_id)

    for n in range(5):
        bus.publish(OrderPlaced(order_id=f"o-{n}"))
    bus.close()
    assert sorted(done) == [f"o-{n}" for n in range(5)]


def test_durable_delivery_is_not_available_without_an_outbox(bus):
    ran: list[str] = []

    @bus.subscribe(name="first")
    def first(event: OrderPlaced) -> None:
        ran.append("first")

    @bus.subscribe(name="keep", delivery="durable")
    def keep(event: OrderPlaced) -> None:
        ran.append("keep")

    with pytest.raises(DeliveryUnavailableError, match="durable handlers"):
        bus.publish(OrderPlaced(order_id="o-16"))
    assert ran == []


def test_drain_inside_the_runtime_loop_is_refused():
    async def main() -> None:
        async with EventBus(registry=REGISTRY) as bus:
            with pytest.raises(RuntimeError, match="adrain"):
                bus.drain()

    asyncio.run(main())


def test_a_drain_that_runs_out_of_time_names_the_deliveries_still_running():
    bus = EventBus(registry=REGISTRY)
    release = threading.Event()

    @bus.subscribe(name="blocked", delivery="after_commit")
    def blocked(event: OrderPlaced) -> None:
        release.wait(30)

    try:
        bus.publish(OrderPlaced(order_id="o-22"))
        bus.publish(OrderPlaced(order_id="o-23"))
        with pytest.raises(TimeoutError, match=r"2 deliveries \(blocked: 2\) running"):
            bus.drain(timeout=0.2)
    finally:
        release.set()
    bus.drain(timeout=10)
    bus.close()


def test_close_waits_for_a_replay_in_flight(slept):
    store = MemoryDeadLetterStore()
    bus = EventBus(registry=REGISTRY, dead_letters=store, retry=RetryPolicy.never())
    failing = threading.Event()
    failing.set()
    entered = threading.Event()
    effects: list[str] = []

    @bus.subscribe(name="slow", delivery="after_commit")
    def slow(event: OrderPlaced) -> None:
        if failing.is_set():
            raise BoomError("down")
        entered.set()
        time.sleep(0.3)
        effects.append(event.order_id)

    bus.publish(OrderPlaced(order_id="o-20"))
    bus.drain(timeout=10)
    [letter] = store.list()
    failing.clear()
    results: list[object] = []
    replayer = threading.Thread(target=lambda: results.append(bus.replay(letter.id)))
    replayer.start()
    assert entered.wait(10)
    bus.close()  # must let the replay finish, resolve its letter and return
    replayer.join(10)
    assert effects == ["o-20"]
    assert [getattr(r, "ok", None) for r in results] == [True]
    assert store.count() == 0


def test_replay_refuses_a_letter_whose_handler_name_now_takes_another_event(bus):
    @bus.subscribe(name="worker", delivery="after_commit", retry=RetryPolicy.never())
    def boom(event: OrderPlaced) -> None:
        raise BoomError("down")

    bus.publish(OrderPlaced(order_id="o-21"))
    bus.drain(timeout=10)
    [letter] = bus.dead_letters.list()
    bus.unsubscribe("worker")
    seen: list[object] = []

    @bus.subscribe(name="worker", delivery="after_commit")
    def other(event: ReceiptSent) -> None:
        seen.append(event)

    with pytest.raises(ValueError, match="does not take any more"):
        bus.replay(letter.id)
    assert seen == []
    assert bus.dead_letters.count() == 1  # kept, and not left claimed:
    bus.unsubscribe("worker")
    bus.subscribe(OrderPlaced, name="worker", delivery="after_commit")(lambda _event: None)
    assert bus.replay(letter.id).ok


def test_replay_after_close_is_bus_closed(bus):
    bus.close()
    with pytest.raises(BusClosedError):
        bus.replay(uuid.uuid4())
