"""Hooks: blinker signals that observe publishes, and never change their outcome."""

import asyncio
import gc
import inspect
import logging
import warnings
from collections.abc import Iterator

import pytest

from eventbus import Envelope, EventBus, EventRegistry, NotAnEventError, event, hooks

REGISTRY = EventRegistry()
PUBLISH_HOOKS = (hooks.event_published, hooks.event_handled, hooks.handler_failed)


@event("hooks.a", registry=REGISTRY)
class A:
    n: int = 0


@event("hooks.b", registry=REGISTRY)
class B:
    n: int = 0


class Recorder:
    """A receiver that records (signal, sender, kwargs) into a shared log."""

    def __init__(self, log: list, label: str) -> None:
        self.log = log
        self.label = label

    def __call__(self, sender: object, **kwargs: object) -> None:
        self.log.append((self.label, sender, kwargs))


@pytest.fixture(autouse=True)
def no_leftover_receivers() -> Iterator[None]:
    """Hooks are global: every test must leave them as it found them (empty)."""
    for signal in PUBLISH_HOOKS:
        assert not signal.receivers, f"{signal.name} has receivers before the test"
    yield
    leftovers = [signal.name for signal in PUBLISH_HOOKS if signal.receivers]
    for signal in PUBLISH_HOOKS:
        for receiver_id in list(signal.receivers):
            signal.receivers.pop(receiver_id)
    assert leftovers == []


@pytest.fixture
def bus() -> EventBus:
    return EventBus(registry=REGISTRY)


def test_hooks_are_sent_with_the_bus_and_the_documented_arguments(bus):
    log: list = []
    published = Recorder(log, "published")
    handled = Recorder(log, "handled")
    failed = Recorder(log, "failed")
    boom = ValueError("boom")

    @bus.subscribe(name="first")
    def first(event: A) -> None:
        log.append(("handler", "first", event))

    @bus.subscribe(name="failing")
    def failing(event: A) -> None:
        log.append(("handler", "failing", event))
        raise boom

    with (
        hooks.event_published.connected_to(published),
        hooks.event_handled.connected_to(handled),
        hooks.handler_failed.connected_to(failed),
    ):
        with pytest.raises(ValueError, match="boom") as caught:
            bus.publish(A(n=1), key="k-1", headers={"tenant": "t"})
        assert caught.value is boom

    assert [entry[:2] for entry in log] == [
        ("published", bus),
        ("handler", "first"),
        ("handled", bus),
        ("handler", "failing"),
        ("failed", bus),
    ]
    published_kwargs = log[0][2]
    handled_kwargs = log[2][2]
    failed_kwargs = log[4][2]
    assert set(published_kwargs) == {"envelope"}
    assert set(handled_kwargs) == {"envelope", "handler"}
    assert set(failed_kwargs) == {"envelope", "handler", "error"}

    envelope = published_kwargs["envelope"]
    assert isinstance(envelope, Envelope)
    assert envelope.event == A(n=1)
    assert envelope.event is log[1][2]
    assert envelope.name == "hooks.a"
    assert envelope.key == "k-1"
    assert dict(envelope.headers) == {"tenant": "t"}
    assert envelope.causation_id is None
    assert handled_kwargs["envelope"] is envelope
    assert handled_kwargs["handler"] == "first"
    assert failed_kwargs["envelope"] is envelope
    assert failed_kwargs["handler"] == "failing"
    assert failed_kwargs["error"] is boom


def test_hooks_under_apublish_follow_the_awaited_handlers(bus):
    log: list = []

    @bus.subscribe(name="slow")
    async def slow(event: A) -> None:
        await asyncio.sleep(0)
        log.append(("handler", "slow"))

    @bus.subscribe(name="quick")
    def quick(event: A) -> None:
        log.append(("handler", "quick"))

    with (
        hooks.event_published.connected_to(Recorder(log, "published")),
        hooks.event_handled.connected_to(Recorder(log, "handled")),
    ):
        asyncio.run(bus.apublish(A()))

    assert [
        (entry[0], entry[1] if entry[0] == "handler" else entry[2].get("handler")) for entry in log
    ] == [
        ("published", None),
        ("handler", "slow"),
        ("handled", "slow"),
        ("handler", "quick"),
        ("handled", "quick"),
    ]


def test_event_published_is_sent_for_a_publish_without_handlers(bus):
    log: list = []
    with hooks.event_published.connected_to(Recorder(log, "published")):
        bus.publish(B(n=3))
    [(label, sender, kwargs)] = log
    assert (label, sender) == ("published", bus)
    assert kwargs["envelope"].event == B(n=3)


def test_nested_publishes_are_announced_with_their_causes(bus):
    log: list = []

    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B())

    with hooks.event_published.connected_to(Recorder(log, "published")):
        bus.publish(A())

    a_envelope, b_envelope = (kwargs["envelope"] for _, _, kwargs in log)
    assert a_envelope.event == A()
    assert b_envelope.event == B()
    assert b_envelope.causation_id == a_envelope.id
    assert b_envelope.correlation_id == a_envelope.id


def test_a_refused_publish_sends_nothing(bus):
    log: list = []

    @bus.subscribe(delivery="durable")
    def durable(event: B) -> None:
        pass

    with (
        hooks.event_published.connected_to(Recorder(log, "published")),
        hooks.handler_failed.connected_to(Recorder(log, "failed")),
    ):
        with pytest.raises(NotAnEventError):
            bus.publish(object())
        with pytest.raises(Exception, match="key"):
            bus.publish(A(), key="")
        with pytest.raises(Exception, match="durable"):
            bus.publish(B())
    assert log == []


def test_a_receiver_for_another_bus_is_not_called(bus):
    other_bus = EventBus(registry=REGISTRY)
    mine: list = []
    theirs: list = []

    with (
        hooks.event_published.connected_to(Recorder(mine, "mine"), sender=bus),
        hooks.event_published.connected_to(Recorder(theirs, "theirs"), sender=other_bus),
    ):
        bus.publish(A(n=1))
        bus.publish(A(n=2))
        other_bus.publish(A(n=3))

    assert [kwargs["envelope"].event for _, _, kwargs in mine] == [A(n=1), A(n=2)]
    assert [(sender, kwargs["envelope"].event) for _, sender, kwargs in theirs] == [
        (other_bus, A(n=3))
    ]


def test_a_raising_receiver_is_logged_and_delivery_goes_on(bus, caplog):
    log: list = []
    receiver_error = RuntimeError("receiver broke")

    def broken(sender: object, **kwargs: object) -> None:
        raise receiver_error

    @bus.subscribe(name="first")
    def first(event: A) -> None:
        log.append("first")

    @bus.subscribe(name="second")
    def second(event: A) -> None:
        log.append("second")

    with (
        caplog.at_level(logging.ERROR, logger="eventbus.hooks"),
        hooks.event_published.connected_to(broken),
        hooks.event_published.connected_to(Recorder(log, "other receiver")),
        hooks.event_handled.connected_to(broken),
    ):
        bus.publish(A())

    # The other receiver and both handlers ran, in order, despite the broken receiver.
    assert [entry if isinstance(entry, str) else entry[0] for entry in log] == [
        "other receiver",
        "first",
        "second",
    ]
    records = [r for r in caplog.records if r.name == "eventbus.hooks"]
    # event_published once, event_handled once per handler.
    assert len(records) == 3
    for record in records:
        assert record.levelno == logging.ERROR
        assert "raised; delivery goes on" in record.getMessage()
        assert record.exc_info is not None
        assert record.exc_info[1] is receiver_error
    assert sum("event_published" in r.getMessage() for r in records) == 1
    assert sum("event_handled" in r.getMessage() for r in records) == 2


def test_a_raising_receiver_does_not_hide_a_handler_error(bus, caplog):
    def broken(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver broke")

    @bus.subscribe
    def failing(event: A) -> None:
        raise KeyError("handler broke")

    with (
        caplog.at_level(logging.ERROR, logger="eventbus.hooks"),
        hooks.handler_failed.connected_to(broken),
        pytest.raises(KeyError, match="handler broke"),
    ):
        bus.publish(A())
    assert any("handler_failed" in r.getMessage() for r in caplog.records)


def test_an_async_receiver_is_logged_and_its_coroutine_closed(bus, caplog):
    ran = []

    async def async_receiver(sender: object, **kwargs: object) -> None:
        ran.append(kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()  # garbage of earlier tests must not be counted here
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with (
            caplog.at_level(logging.ERROR, logger="eventbus.hooks"),
            hooks.event_published.connected_to(async_receiver),
        ):
            bus.publish(A())
        gc.collect()

    assert ran == []
    [record] = [r for r in caplog.records if r.name == "eventbus.hooks"]
    assert record.levelno == logging.ERROR
    assert "is async; hook receivers must be sync functions" in record.getMessage()
    assert "event_published" in record.getMessage()
    assert [w for w in caught_warnings if issubclass(w.category, RuntimeWarning)] == []


def test_a_receiver_returning_a_coroutine_has_it_closed(bus, caplog):
    coroutines = []

    async def work() -> None:
        pass

    def returns_coroutine(sender: object, **kwargs: object):
        coroutine = work()
        coroutines.append(coroutine)
        return coroutine

    @bus.subscribe
    def on_a(event: A) -> None:
        coroutines.append("handler ran")

    with (
        caplog.at_level(logging.ERROR, logger="eventbus.hooks"),
        hooks.event_published.connected_to(returns_coroutine),
    ):
        bus.publish(A())

    coroutine, handler_ran = coroutines
    assert handler_ran == "handler ran"
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert any("is async" in r.getMessage() for r in caplog.records)


def test_after_disconnect_nothing_is_sent(bus):
    log: list = []
    receiver = Recorder(log, "published")

    hooks.event_published.connect(receiver)
    try:
        bus.publish(A(n=1))
    finally:
        hooks.event_published.disconnect(receiver)
    bus.publish(A(n=2))

    assert [kwargs["envelope"].event for _, _, kwargs in log] == [A(n=1)]


@pytest.mark.parametrize("signal", PUBLISH_HOOKS, ids=lambda s: s.name)
def test_connecting_after_a_publish_takes_effect_on_the_next(bus, signal):
    log: list = []
    receiver = Recorder(log, signal.name)

    @bus.subscribe(name="sometimes-fails")
    def sometimes_fails(event: A) -> None:
        if event.n < 0:
            raise ValueError("negative")

    @bus.subscribe(name="async-b")
    async def async_b(event: B) -> None:
        pass

    def publish_all() -> None:
        bus.publish(A(n=1))
        with pytest.raises(ValueError, match="negative"):
            bus.publish(A(n=-1))
        asyncio.run(bus.apublish(A(n=2)))
        asyncio.run(bus.apublish(B()))

    publish_all()  # routes are cached: nothing observes yet
    assert log == []

    signal.connect(receiver)
    try:
        publish_all()
    finally:
        signal.disconnect(receiver)
    sent = [(kwargs["envelope"].event, kwargs.get("handler")) for _, _, kwargs in log]
    expected = {
        "event_published": [(A(n=1), None), (A(n=-1), None), (A(n=2), None), (B(), None)],
        "event_handled": [
            (A(n=1), "sometimes-fails"),
            (A(n=2), "sometimes-fails"),
            (B(), "async-b"),
        ],
        "handler_failed": [(A(n=-1), "sometimes-fails")],
    }[signal.name]
    assert sent == expected

    log.clear()
    publish_all()
    assert log == []


def test_connecting_with_the_decorator_form(bus):
    log: list = []

    bus.publish(A(n=1))

    @hooks.event_published.connect
    def on_published(sender: object, *, envelope: Envelope) -> None:
        log.append(envelope.event)

    try:
        bus.publish(A(n=2))
    finally:
        hooks.event_published.disconnect(on_published)
    bus.publish(A(n=3))
    assert log == [A(n=2)]


def test_connected_to_connects_only_inside_the_block(bus):
    log: list = []
    receiver = Recorder(log, "published")

    bus.publish(A(n=1))
    with hooks.event_published.connected_to(receiver):
        bus.publish(A(n=2))
        assert hooks.event_published.receivers
    bus.publish(A(n=3))

    assert [kwargs["envelope"].event for _, _, kwargs in log] == [A(n=2)]
    assert not hooks.event_published.receivers


def test_connected_to_disconnects_when_the_block_raises(bus):
    log: list = []

    def publish_then_fail() -> None:
        with hooks.event_published.connected_to(Recorder(log, "p")):
            bus.publish(A(n=1))
            raise LookupError

    with pytest.raises(LookupError):
        publish_then_fail()
    bus.publish(A(n=2))
    assert [kwargs["envelope"].event for _, _, kwargs in log] == [A(n=1)]


def test_every_hook_is_a_named_blinker_signal():
    from blinker import NamedSignal

    for name in hooks.__all__:
        signal = getattr(hooks, name)
        assert isinstance(signal, NamedSignal)
        assert signal.name == name


def test_a_receiver_disconnected_from_its_only_sender_observes_nothing_any_more():
    """blinker keeps such a receiver among its receivers; the bus must not pay for it."""
    first, second = EventBus(), EventBus()

    def receiver(_bus, **_):
        pass

    hooks.event_published.connect(receiver, sender=first)
    hooks.event_published.connect(receiver, sender=second)
    hooks.event_published.disconnect(receiver, sender=first)
    assert hooks._publish_observed()  # still connected to the second bus
    hooks.event_published.disconnect(receiver, sender=second)
    assert not hooks._publish_observed()
    assert not hooks.event_published.receivers
    first.close()
    second.close()
