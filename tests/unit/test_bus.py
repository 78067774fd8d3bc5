"""Publishing: dispatch order, errors, sync and async, validation, lifecycle, threads.

The bus has three publish paths (a plain tuple of functions, a causation-tracking tuple
and the general path), picked per event class; behaviour must not depend on which one
runs, so most tests run under every ``shape``.
"""

import asyncio
import contextlib
import functools
import inspect
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from eventbus import (
    AsyncHandlerError,
    BusClosedError,
    ConfigurationError,
    DeliveryUnavailableError,
    Envelope,
    EventBus,
    EventRegistry,
    NotAnEventError,
    event,
)
from eventbus.testing import capture_events

REGISTRY = EventRegistry()


@attrs.frozen
class Auditable:
    """An unregistered attrs base: handlers may subscribe to it, nobody publishes it."""


@event("bus.base", registry=REGISTRY)
class Base(Auditable):
    n: int = 0


@event("bus.mid", registry=REGISTRY)
class Mid(Base):
    pass


@event("bus.leaf", version=2, registry=REGISTRY)
class Leaf(Mid):
    pass


@event("bus.other", registry=REGISTRY)
class Other:
    n: int = 0


@event("bus.unrelated", registry=REGISTRY)
class Unrelated:
    pass


SHAPES = ["plain", "tracked", "observed"]


@contextlib.contextmanager
def route_shape(bus: EventBus, shape: str) -> Iterator[None]:
    """Make the bus pick one of its publish paths for events other than Unrelated."""
    if shape == "plain":
        yield
    elif shape == "tracked":
        # A durable handler anywhere on the bus turns causation tracking on.
        bus.subscribe(Unrelated, name="unrelated-durable", delivery="durable")(_ignore)
        yield
    else:
        with capture_events(bus):
            yield


def _ignore(event: object) -> None:
    pass


@pytest.fixture(params=SHAPES)
def shape(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def bus() -> Iterator[EventBus]:
    with EventBus(registry=REGISTRY) as bus:
        yield bus


# -- inline dispatch --------------------------------------------------------------------


def test_publish_runs_inline_sync_handlers_with_the_event(bus, shape):
    seen = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        seen.append(("on_base", event))

    @bus.subscribe
    def on_other(event: Other) -> None:
        seen.append(("on_other", event))

    published = Base(n=1)
    with route_shape(bus, shape):
        assert bus.publish(published) is None
        bus.publish(Other(n=2))
        bus.publish(Base(n=3))

    assert seen == [("on_base", Base(n=1)), ("on_other", Other(n=2)), ("on_base", Base(n=3))]
    assert seen[0][1] is published


def test_publish_with_no_handlers_does_nothing(bus, shape):
    with route_shape(bus, shape):
        bus.publish(Other(n=1))
        asyncio.run(bus.apublish(Other(n=1)))


def _subscribe_hierarchy(bus: EventBus, log: list) -> None:
    def make(label: str, annotation: object):
        def handler(event) -> None:
            log.append(label)

        handler.__annotations__ = {"event": annotation}
        bus.subscribe(name=label)(handler)

    # Deliberately interleaved: dispatch order is by class first, subscription second.
    make("object", object)
    make("base-1", Base)
    make("leaf-1", Leaf)
    make("auditable", Auditable)
    make("mid-1", Mid)
    make("base-2", Base)
    make("leaf-2", Leaf)


def test_dispatch_order_follows_the_mro_then_subscription_order(bus, shape):
    log: list[str] = []
    _subscribe_hierarchy(bus, log)

    with route_shape(bus, shape):
        bus.publish(Leaf())
        assert log == ["leaf-1", "leaf-2", "mid-1", "base-1", "base-2", "auditable", "object"]
        log.clear()
        bus.publish(Mid())
        assert log == ["mid-1", "base-1", "base-2", "auditable", "object"]
        log.clear()
        bus.publish(Base())
        assert log == ["base-1", "base-2", "auditable", "object"]
        log.clear()
        bus.publish(Other())
        assert log == ["object"]


def test_apublish_dispatch_order_matches_publish(bus, shape):
    log: list[str] = []
    _subscribe_hierarchy(bus, log)

    with route_shape(bus, shape):
        asyncio.run(bus.apublish(Leaf()))
    assert log == ["leaf-1", "leaf-2", "mid-1", "base-1", "base-2", "auditable", "object"]


def test_handlers_for_returns_the_dispatch_order(bus):
    _subscribe_hierarchy(bus, [])

    assert [h.name for h in bus.handlers_for(Leaf)] == [
        "leaf-1",
        "leaf-2",
        "mid-1",
        "base-1",
        "base-2",
        "auditable",
        "object",
    ]
    assert [h.name for h in bus.handlers_for(Auditable)] == ["auditable", "object"]
    assert [h.name for h in bus.handlers_for(Other)] == ["object"]


def test_a_handler_of_a_class_and_its_base_runs_once(bus, shape):
    log = []

    @bus.subscribe
    def first_leaf(event: Leaf) -> None:
        log.append("first_leaf")

    @bus.subscribe
    def both(event: Base | Leaf) -> None:
        log.append("both")

    @bus.subscribe
    def on_mid(event: Mid) -> None:
        log.append("on_mid")

    with route_shape(bus, shape):
        bus.publish(Leaf())
        assert log == ["first_leaf", "both", "on_mid"]
        log.clear()
        bus.publish(Mid())
        assert log == ["on_mid", "both"]

    assert [h.name.rsplit(".", 1)[-1] for h in bus.handlers_for(Leaf)] == [
        "first_leaf",
        "both",
        "on_mid",
    ]


# -- errors from handlers ---------------------------------------------------------------


def test_an_inline_exception_reaches_the_caller_and_stops_later_handlers(bus, shape):
    log = []
    boom = ValueError("boom")

    @bus.subscribe
    def before(event: Base) -> None:
        log.append("before")

    @bus.subscribe
    def failing(event: Base) -> None:
        log.append("failing")
        raise boom

    @bus.subscribe
    def after(event: Base) -> None:
        log.append("after")

    with route_shape(bus, shape):
        with pytest.raises(ValueError, match="boom") as caught:
            bus.publish(Base())
        assert caught.value is boom
        assert log == ["before", "failing"]

        log.clear()
        with pytest.raises(ValueError, match="boom"):
            asyncio.run(bus.apublish(Base()))
        assert log == ["before", "failing"]


def test_an_async_handler_exception_reaches_the_apublish_caller(bus, shape):
    log = []

    @bus.subscribe
    async def failing(event: Base) -> None:
        await asyncio.sleep(0)
        log.append("failing")
        raise KeyError("missing")

    @bus.subscribe
    async def after(event: Base) -> None:
        log.append("after")

    with route_shape(bus, shape), pytest.raises(KeyError, match="missing"):
        asyncio.run(bus.apublish(Base()))
    assert log == ["failing"]


# -- async ------------------------------------------------------------------------------


def test_apublish_runs_sync_and_async_handlers_in_order(bus, shape):
    log = []

    @bus.subscribe
    def sync_1(event: Base) -> None:
        log.append("sync_1")

    @bus.subscribe
    async def async_1(event: Base) -> None:
        log.append("async_1 start")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.append("async_1 end")

    @bus.subscribe
    def sync_2(event: Base) -> None:
        log.append("sync_2")

    @bus.subscribe
    async def async_2(event: Base) -> None:
        log.append("async_2 start")
        await asyncio.sleep(0)
        log.append("async_2 end")

    async def main() -> None:
        async def bystander() -> None:
            for _ in range(5):
                log.append("bystander")
                await asyncio.sleep(0)

        task = asyncio.create_task(bystander())
        await bus.apublish(Base())
        log.append("returned")
        await task

    with route_shape(bus, shape):
        asyncio.run(main())

    mine = [entry for entry in log if entry != "bystander"]
    assert mine == [
        "sync_1",
        "async_1 start",
        "async_1 end",
        "sync_2",
        "async_2 start",
        "async_2 end",
        "returned",
    ]
    # The handlers really awaited: another task ran between their steps.
    assert log.index("bystander") < log.index("async_1 end")


def test_apublish_with_only_async_handlers(bus, shape):
    log = []

    @bus.subscribe
    async def first(event: Base) -> None:
        await asyncio.sleep(0)
        log.append(("first", event))

    @bus.subscribe
    async def second(event: Base) -> None:
        log.append(("second", event))

    with route_shape(bus, shape):
        asyncio.run(bus.apublish(Base(n=1)))
    assert log == [("first", Base(n=1)), ("second", Base(n=1))]


def test_apublish_with_only_sync_handlers(bus, shape):
    log = []

    @bus.subscribe
    def first(event: Base) -> None:
        log.append("first")

    @bus.subscribe
    def second(event: Base) -> None:
        log.append("second")

    with route_shape(bus, shape):
        asyncio.run(bus.apublish(Base()))
    assert log == ["first", "second"]


def test_sync_publish_with_an_async_inline_handler_runs_no_handler(bus, shape):
    log = []

    @bus.subscribe
    def sync_first(event: Base) -> None:
        log.append("sync_first")

    @bus.subscribe
    async def async_handler(event: Base) -> None:
        log.append("async_handler")

    with route_shape(bus, shape):
        with pytest.raises(AsyncHandlerError, match=r"apublish") as caught:
            bus.publish(Base())
        assert isinstance(caught.value, TypeError)
        assert "async_handler" in str(caught.value)
        assert "No handler was run" in str(caught.value)
        assert log == []

        # The same route under apublish runs both.
        asyncio.run(bus.apublish(Base()))
        assert log == ["sync_first", "async_handler"]


def test_async_handler_on_a_base_class_blocks_sync_publish_of_a_subclass(bus, shape):
    log = []

    @bus.subscribe
    def on_leaf(event: Leaf) -> None:
        log.append("on_leaf")

    @bus.subscribe
    async def on_base(event: Base) -> None:
        log.append("on_base")

    with route_shape(bus, shape), pytest.raises(AsyncHandlerError):
        bus.publish(Leaf())
    assert log == []


def test_sync_publish_ignores_what_a_sync_handler_returns(bus, shape):
    # publish() does not look at return values (that would cost every publish); an
    # awaitable returned by a plain def is the caller's to await. apublish() awaits it.
    log = []
    returned = []

    async def work() -> None:
        log.append("work")

    @bus.subscribe
    def returns_coroutine(event: Base) -> None:
        log.append("returns_coroutine")
        coroutine = work()
        returned.append(coroutine)
        return coroutine  # type: ignore[return-value]

    @bus.subscribe(name="after")
    def after(event: Base) -> None:
        log.append("after")

    try:
        with route_shape(bus, shape):
            bus.publish(Base(n=1))
        assert log == ["returns_coroutine", "after"]
        assert inspect.getcoroutinestate(returned[0]) == inspect.CORO_CREATED
    finally:
        for coroutine in returned:  # never leave an unawaited coroutine to a later test's gc
            coroutine.close()


def _passthrough(fn):
    """A decorator that wraps a coroutine function in a plain def, keeping __wrapped__."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def test_a_decorated_coroutine_function_is_an_async_handler(bus, shape):
    log = []

    @bus.subscribe
    def sync_first(event: Base) -> None:
        log.append("sync_first")

    @bus.subscribe
    @_passthrough
    async def decorated(event: Base) -> None:
        await asyncio.sleep(0)
        log.append("decorated")

    with route_shape(bus, shape):
        with pytest.raises(AsyncHandlerError, match="decorated"):
            bus.publish(Base())
        assert log == []
        asyncio.run(bus.apublish(Base()))
    assert log == ["sync_first", "decorated"]


def test_sync_handler_returning_a_coroutine_under_apublish_is_awaited(bus, shape):
    log = []

    async def work(event: Base) -> None:
        await asyncio.sleep(0)
        log.append(("work", event))

    @bus.subscribe
    def returns_coroutine(event: Base) -> None:
        log.append("returns_coroutine")
        return work(event)  # type: ignore[return-value]

    @bus.subscribe
    def after(event: Base) -> None:
        log.append("after")

    with route_shape(bus, shape):
        asyncio.run(bus.apublish(Base(n=4)))
    assert log == ["returns_coroutine", ("work", Base(n=4)), "after"]


def test_a_sync_handler_returning_a_plain_value_is_fine(bus, shape):
    log = []

    @bus.subscribe
    def returns_value(event: Base) -> int:
        log.append("returns_value")
        return 42

    @bus.subscribe
    def after(event: Base) -> None:
        log.append("after")

    with route_shape(bus, shape):
        bus.publish(Base())
    assert log == ["returns_value", "after"]


# -- what can be published --------------------------------------------------------------


class Plain:
    pass


@attrs.frozen
class Unregistered:
    pass


@attrs.frozen
class UndeclaredLeaf(Leaf):
    pass


ELSEWHERE = EventRegistry()


@event("bus.elsewhere", registry=ELSEWHERE)
class ElsewhereEvent:
    pass


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda: 5, ["got int", "@eventbus.event("]),
        (lambda: "bus.base", ["got str", "@eventbus.event("]),
        (Plain, ["got Plain", "@eventbus.event("]),
        (Unregistered, ["got Unregistered", "@eventbus.event("]),
        (lambda: Base, ["event instance", "got a class"]),
        (UndeclaredLeaf, ["UndeclaredLeaf", "subclass", "Leaf", "@eventbus.event("]),
        (ElsewhereEvent, ["ElsewhereEvent", "@eventbus.event("]),
    ],
    ids=["int", "str", "plain-object", "unregistered-attrs", "class", "subclass", "elsewhere"],
)
def test_publishing_a_non_event_is_refused(bus, shape, make, fragments):
    log = []

    @bus.subscribe
    def on_everything(event: object) -> None:
        log.append(event)

    with route_shape(bus, shape):
        with pytest.raises(NotAnEventError) as caught:
            bus.publish(make())
        assert isinstance(caught.value, TypeError)
        for fragment in fragments:
            assert fragment in str(caught.value)

        with pytest.raises(NotAnEventError):
            asyncio.run(bus.apublish(make()))
        with pytest.raises(NotAnEventError):
            bus.publish(make(), key="k", headers={"h": "v"})
    assert log == []


# -- key and headers --------------------------------------------------------------------

BAD_KEYS = [5, "", "k" * 1025, b"key", ("a",)]
BAD_HEADERS = [
    [("tenant", "t-1")],
    "tenant=t-1",
    {"tenant": 1},
    {"tenant": None},
    {1: "t-1"},
    {"": "t-1"},
    {f"h{i}": "v" for i in range(65)},
    {"big": "v" * 4096},
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_bad_key_is_refused_before_any_handler_runs(bus, shape, key):
    log = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        log.append(event)

    with route_shape(bus, shape):
        with pytest.raises(ConfigurationError, match="key must be a non-empty str"):
            bus.publish(Base(), key=key)
        with pytest.raises(ConfigurationError, match="key must be a non-empty str"):
            asyncio.run(bus.apublish(Base(), key=key))
    assert log == []


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_headers_are_refused_before_any_handler_runs(bus, shape, headers):
    log = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        log.append(event)

    with route_shape(bus, shape):
        with pytest.raises(ConfigurationError, match="header"):
            bus.publish(Base(), headers=headers)
        with pytest.raises(ConfigurationError, match="header"):
            asyncio.run(bus.apublish(Base(), headers=headers))
    assert log == []


def test_an_over_long_key_is_cut_in_the_error_which_says_its_length(bus, shape):
    key = "order-" + "9" * 5000
    with route_shape(bus, shape), pytest.raises(ConfigurationError) as caught:
        bus.publish(Base(), key=key)
    text = str(caught.value)
    assert "5006 characters" in text
    assert "at most 1024" in text
    assert len(text) < 400
    assert "9" * 100 not in text


@pytest.mark.parametrize(
    "key", ["order\n1", "order-1\r\nX-Admin: yes", "a\x00b", "tab\there", "del\x7f", "c1\x85"]
)
def test_a_key_with_control_characters_is_refused_before_any_handler_runs(bus, shape, key):
    log = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        log.append(event)

    with route_shape(bus, shape):
        with pytest.raises(ConfigurationError, match="key must not contain control") as caught:
            bus.publish(Base(), key=key)
        with pytest.raises(ConfigurationError, match="key must not contain control"):
            asyncio.run(bus.apublish(Base(), key=key))
    assert log == []
    # The error shows the character escaped, never raw: it may end up in a log line.
    assert "\n" not in str(caught.value)
    assert "\x00" not in str(caught.value)
    assert "U+00" in str(caught.value)


@pytest.mark.parametrize(
    "key", ["caf\u00e9", "\u00a0nbsp", "\U0001f468\u200d\U0001f469", "line\u2028sep", "k y"]
)
def test_keys_of_any_printable_text_are_accepted(bus, shape, key):
    seen = []

    @bus.subscribe
    def on_base(event: Base, envelope: Envelope) -> None:
        seen.append(envelope.key)

    with route_shape(bus, shape):
        bus.publish(Base(), key=key)
    assert seen == [key]


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": "00-abc\r\nX-Injected: 1"},
        {"tenant\n": "t-1"},
        {"tenant": "t\x001"},
    ],
)
def test_headers_with_control_characters_are_refused(bus, shape, headers):
    with route_shape(bus, shape):
        with pytest.raises(ConfigurationError, match="must not contain control") as caught:
            bus.publish(Base(), headers=headers)
    assert "\n" not in str(caught.value)
    assert "\x00" not in str(caught.value)


def test_an_over_long_header_value_is_cut_in_the_error(bus, shape):
    with route_shape(bus, shape):
        with pytest.raises(ConfigurationError) as caught:
            bus.publish(Base(), headers={"tenant": 5.0, "x": "v"})  # type: ignore[dict-item]
        with pytest.raises(ConfigurationError) as long:
            bus.publish(Base(), headers={"h" * 3000: "v" * 3000})
    assert "5.0" in str(caught.value)
    assert len(str(long.value)) < 400
    assert "6000" in str(long.value)


def test_longest_key_and_most_headers_are_accepted(bus, shape):
    seen = []

    @bus.subscribe
    def on_base(event: Base, envelope: Envelope) -> None:
        seen.append(envelope)

    headers = {f"h{i}": "v" for i in range(64)}
    with route_shape(bus, shape):
        bus.publish(Base(), key="k" * 1024, headers=headers)
    assert seen[0].key == "k" * 1024
    assert dict(seen[0].headers) == headers


def test_key_and_headers_reach_the_envelope(bus, shape):
    seen = []

    @bus.subscribe
    def on_leaf(event: Leaf, envelope: Envelope) -> None:
        seen.append(envelope)

    headers = {"tenant": "t-1", "traceparent": "00-abc-def-01"}
    published = Leaf(n=9)
    with route_shape(bus, shape):
        before = datetime.now(UTC)
        bus.publish(published, key="order-1", headers=headers)
        after = datetime.now(UTC)

    [envelope] = seen
    assert envelope.event is published
    assert envelope.key == "order-1"
    assert dict(envelope.headers) == headers
    assert envelope.header_dict == headers
    assert envelope.name == "bus.leaf"
    assert envelope.version == 2
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert before <= envelope.occurred_at <= after
    assert isinstance(envelope.id, uuid.UUID)
    assert envelope.id.version == 7
    assert envelope.id.variant == uuid.RFC_4122
    id_ms = envelope.id.int >> 80
    assert abs(id_ms - envelope.occurred_at.timestamp() * 1000) < 1000
    assert envelope.correlation_id == envelope.id
    assert envelope.causation_id is None

    # The envelope keeps its own read-only copy of the headers.
    headers["tenant"] = "changed"
    assert envelope.headers["tenant"] == "t-1"
    with pytest.raises(TypeError):
        envelope.headers["tenant"] = "x"  # type: ignore[index]


def test_envelope_defaults_without_key_and_headers(bus, shape):
    seen = []

    @bus.subscribe
    async def on_base(event: Base, envelope: Envelope) -> None:
        seen.append(envelope)

    with route_shape(bus, shape):
        asyncio.run(bus.apublish(Base(), key="k", headers={"a": "b"}))
        asyncio.run(bus.apublish(Base()))

    first, second = seen
    assert (first.key, dict(first.headers)) == ("k", {"a": "b"})
    assert (second.key, dict(second.headers)) == (None, {})
    assert second.name == "bus.base"
    assert second.version == 1
    assert first.id != second.id
    assert second.id > first.id  # UUIDv7: later publications sort later
    assert second.correlation_id == second.id


# -- deliveries the bus cannot carry out ------------------------------------------------


def test_publish_with_durable_handlers_is_refused_and_runs_nothing(bus, shape):
    # Durable delivery needs the transactional outbox, which this bus does not have.
    log = []

    @bus.subscribe
    def inline_first(event: Base) -> None:
        log.append("inline_first")

    @bus.subscribe(delivery="durable")
    def deferred(event: Base) -> None:
        log.append("deferred")

    with route_shape(bus, shape):
        with pytest.raises(
            DeliveryUnavailableError, match=r"durable handlers \(.*deferred\)"
        ) as caught:
            bus.publish(Leaf())
        assert isinstance(caught.value, RuntimeError)
        assert "No handler was run" in str(caught.value)
        with pytest.raises(DeliveryUnavailableError):
            asyncio.run(bus.apublish(Base()))
        with pytest.raises(DeliveryUnavailableError):
            bus.publish(Base(), key="k")
        # Events the deferred handler does not take are unaffected.
        bus.publish(Other())
    assert log == []


def test_after_commit_handlers_run_after_the_inline_ones_outside_a_transaction(bus, shape):
    log = []

    @bus.subscribe
    def inline_first(event: Base) -> None:
        log.append("inline_first")

    @bus.subscribe(delivery="after_commit")
    def deferred(event: Base) -> None:
        log.append("deferred")

    with route_shape(bus, shape):
        bus.publish(Leaf())
        bus.drain(timeout=10)
    assert log == ["inline_first", "deferred"]
    bus.close()


# -- subscribing after publishing -------------------------------------------------------


def test_subscribe_and_unsubscribe_take_effect_on_the_next_publish(bus, shape):
    log = []

    def first(event: Leaf) -> None:
        log.append("first")

    def on_base(event: Base) -> None:
        log.append("on_base")

    def with_envelope(event: Leaf, envelope: Envelope) -> None:
        log.append(("with_envelope", envelope.name))

    async def async_one(event: Leaf) -> None:
        log.append("async_one")

    with route_shape(bus, shape):
        bus.subscribe(first)
        bus.publish(Leaf())
        asyncio.run(bus.apublish(Leaf()))
        assert log == ["first", "first"]

        log.clear()
        bus.subscribe(on_base)
        bus.publish(Leaf())
        asyncio.run(bus.apublish(Leaf()))
        assert log == ["first", "on_base", "first", "on_base"]

        log.clear()
        bus.subscribe(with_envelope)
        bus.publish(Leaf())
        assert log == ["first", ("with_envelope", "bus.leaf"), "on_base"]

        log.clear()
        bus.unsubscribe(first)
        bus.unsubscribe(with_envelope)
        bus.publish(Leaf())
        assert log == ["on_base"]

        log.clear()
        bus.subscribe(async_one)
        with pytest.raises(AsyncHandlerError):
            bus.publish(Leaf())
        assert log == []
        bus.unsubscribe(async_one)
        bus.publish(Leaf())
        assert log == ["on_base"]

        log.clear()
        bus.unsubscribe(on_base)
        bus.publish(Leaf())
        asyncio.run(bus.apublish(Leaf()))
        assert log == []


def test_subscribing_a_durable_handler_after_publishing_blocks_the_next_publish(bus, shape):
    log = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        log.append("on_base")

    with route_shape(bus, shape):
        bus.publish(Base())
        bus.subscribe(Base, name="durable", delivery="durable")(_ignore)
        with pytest.raises(DeliveryUnavailableError):
            bus.publish(Base())
        bus.unsubscribe("durable")
        bus.publish(Base())
    assert log == ["on_base", "on_base"]


# -- lifecycle --------------------------------------------------------------------------


def test_close_refuses_later_publishes_and_subscriptions(shape):
    bus = EventBus(registry=REGISTRY)
    log = []

    @bus.subscribe
    def on_base(event: Base) -> None:
        log.append("on_base")

    def late(event: Base) -> None:
        log.append("late")

    with route_shape(bus, shape):
        bus.publish(Base())  # routes are cached now
        asyncio.run(bus.apublish(Base()))
        assert bus.closed is False
        bus.close()
        assert bus.closed is True

        with pytest.raises(BusClosedError, match="closed") as caught:
            bus.publish(Base())
        assert isinstance(caught.value, RuntimeError)
        with pytest.raises(BusClosedError):
            asyncio.run(bus.apublish(Base()))
        with pytest.raises(BusClosedError):
            bus.publish(Base(), key="k")
        with pytest.raises(BusClosedError):
            bus.publish(Other())
        with pytest.raises(BusClosedError):
            bus.subscribe(late)
    assert log == ["on_base", "on_base"]
    assert on_base in [h.fn for h in bus.handlers]
    assert late not in [h.fn for h in bus.handlers]
    bus.close()  # closing twice is harmless
    assert bus.closed is True


def test_bus_as_a_context_manager_closes_on_exit():
    with EventBus(registry=REGISTRY) as bus:
        assert isinstance(bus, EventBus)
        assert bus.closed is False
        bus.publish(Base())
    assert bus.closed is True
    with pytest.raises(BusClosedError):
        bus.publish(Base())


def test_bus_as_a_context_manager_closes_when_the_block_raises():
    with pytest.raises(ZeroDivisionError), EventBus(registry=REGISTRY) as bus:
        1 / 0  # noqa: B018
    assert bus.closed is True


def test_bus_as_an_async_context_manager_closes_on_exit():
    async def main() -> EventBus:
        async with EventBus(registry=REGISTRY) as bus:
            assert bus.closed is False
            await bus.apublish(Base())
        assert bus.closed is True
        with pytest.raises(BusClosedError):
            await bus.apublish(Base())
        return bus

    assert asyncio.run(main()).closed is True


def test_aclose():
    bus = EventBus(registry=REGISTRY)
    asyncio.run(bus.aclose())
    assert bus.closed is True
    with pytest.raises(BusClosedError):
        bus.publish(Base())


def test_repr_shows_state_and_handler_count():
    bus = EventBus(registry=REGISTRY)
    bus.subscribe(_ignore_base)
    assert repr(bus) == "<EventBus open, 1 handlers>"
    bus.close()
    assert repr(bus) == "<EventBus closed, 1 handlers>"


def _ignore_base(event: Base) -> None:
    pass


# -- threads ----------------------------------------------------------------------------


def test_concurrent_publishes_from_threads_are_all_handled(bus, shape):
    threads_count, per_thread = 8, 1000
    lock = threading.Lock()
    handled: Counter[int] = Counter()
    other_handled: Counter[int] = Counter()

    @bus.subscribe
    def on_base(event: Base) -> None:
        with lock:
            handled[event.n] += 1

    @bus.subscribe
    def on_leaf(event: Leaf) -> None:
        with lock:
            other_handled[event.n] += 1

    start = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(per_thread):
                bus.publish(Leaf(n=index) if i % 2 else Base(n=index))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    with route_shape(bus, shape):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert errors == []
    assert handled == dict.fromkeys(range(threads_count), per_thread)
    assert other_handled == dict.fromkeys(range(threads_count), per_thread // 2)


def test_apublish_is_a_real_coroutine_function(bus):
    # Frameworks (Starlette, Django) inspect this to decide how to call it.
    assert inspect.iscoroutinefunction(bus.apublish)
    assert inspect.iscoroutinefunction(EventBus.apublish)
    assert EventBus.publish.__name__ == "publish"
    assert EventBus.apublish.__qualname__ == "EventBus.apublish"
