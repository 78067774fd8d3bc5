"""Causation and correlation: a publish made while handling an event links to it."""

import asyncio
import contextlib
import gc
import threading
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest

from eventbus import Envelope, EventBus, EventRegistry, _bus, event, hooks
from eventbus.testing import capture_events

REGISTRY = EventRegistry()


@event("causation.a", registry=REGISTRY)
class A:
    n: int = 0


@event("causation.b", registry=REGISTRY)
class B:
    n: int = 0


@event("causation.c", registry=REGISTRY)
class C:
    n: int = 0


@event("causation.unrelated", registry=REGISTRY)
class Unrelated:
    pass


Envelopes = Callable[[type], list[Envelope]]

# (i) only envelope-taking handlers see envelopes; nothing else observes.
# (ii) a durable handler of an unrelated event turns tracking on; a capture observes.
# (iii) a hook receiver observes.
SHAPES = ["envelope_handlers", "durable_elsewhere_and_capture", "hook_receiver"]


@contextlib.contextmanager
def observing(bus: EventBus, shape: str, watch: tuple[type, ...]) -> Iterator[Envelopes]:
    """Observe the envelopes of ``watch`` events on ``bus`` in one route shape."""
    seen: dict[type, list[Envelope]] = defaultdict(list)
    lock = threading.Lock()

    def record(envelope: Envelope) -> None:
        if isinstance(envelope.event, watch):
            with lock:
                seen[type(envelope.event)].append(envelope)

    if shape == "envelope_handlers":
        for index, event_type in enumerate(watch):
            _subscribe_observer(bus, event_type, f"observe-{index}", record)
        yield lambda event_type: list(seen[event_type])
    elif shape == "durable_elsewhere_and_capture":
        bus.subscribe(Unrelated, name="durable-elsewhere", delivery="durable")(_ignore)
        with capture_events(bus) as captured:
            yield lambda event_type: [
                env for env in captured.envelopes if type(env.event) is event_type
            ]
    else:

        def receiver(sender: object, *, envelope: Envelope) -> None:
            record(envelope)

        with hooks.event_published.connected_to(receiver, sender=bus):
            yield lambda event_type: list(seen[event_type])


def _subscribe_observer(
    bus: EventBus, event_type: type, name: str, record: Callable[[Envelope], None]
) -> None:
    def observe(event: object, envelope: Envelope) -> None:
        record(envelope)

    bus.subscribe(event_type, name=name)(observe)


def _ignore(event: object) -> None:
    pass


@pytest.fixture(params=SHAPES)
def shape(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def bus() -> EventBus:
    return EventBus(registry=REGISTRY)


def assert_root(envelope: Envelope) -> None:
    assert envelope.causation_id is None
    assert envelope.correlation_id == envelope.id


def assert_child(child: Envelope, parent_id: uuid.UUID, correlation_id: uuid.UUID) -> None:
    assert child.causation_id == parent_id
    assert child.correlation_id == correlation_id
    assert child.id not in (parent_id, correlation_id)


# -- one level, in every route shape ---------------------------------------------------


def test_a_publish_inside_a_handler_links_to_its_cause(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=event.n))

    with observing(bus, shape, watch=(B,)) as envelopes:
        bus.publish(A(n=1))

    [b] = envelopes(B)
    # A is a root: its correlation id is its own id, which is B's cause.
    assert b.causation_id is not None
    assert b.causation_id != b.id
    assert b.correlation_id == b.causation_id


def test_a_publish_inside_an_async_handler_links_to_its_cause(bus, shape):
    @bus.subscribe
    async def on_a(event: A) -> None:
        await asyncio.sleep(0)
        await bus.apublish(B(n=event.n))

    with observing(bus, shape, watch=(B,)) as envelopes:
        asyncio.run(bus.apublish(A(n=1)))

    [b] = envelopes(B)
    assert b.causation_id is not None
    assert b.correlation_id == b.causation_id


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_child_names_the_parent_envelope(bus, shape, mode):
    if mode == "sync":

        @bus.subscribe
        def on_a(event: A) -> None:
            bus.publish(B(n=event.n))

    else:

        @bus.subscribe
        async def on_a_async(event: A) -> None:
            await bus.apublish(B(n=event.n))

    with observing(bus, shape, watch=(A, B)) as envelopes:
        if mode == "sync":
            bus.publish(A(n=1))
        else:
            asyncio.run(bus.apublish(A(n=1)))

    [a] = envelopes(A)
    [b] = envelopes(B)
    assert_root(a)
    assert_child(b, parent_id=a.id, correlation_id=a.id)


def test_the_parent_handler_sees_the_id_its_children_name(bus, shape):
    parent_ids = []

    @bus.subscribe
    def on_a(event: A, envelope: Envelope) -> None:
        parent_ids.append(envelope.id)
        bus.publish(B())

    with observing(bus, shape, watch=(B,)) as envelopes:
        bus.publish(A())

    [b] = envelopes(B)
    [a_id] = parent_ids
    assert_child(b, parent_id=a_id, correlation_id=a_id)


def test_three_levels(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=event.n))

    @bus.subscribe
    def on_b(event: B) -> None:
        bus.publish(C(n=event.n))

    with observing(bus, shape, watch=(A, B, C)) as envelopes:
        bus.publish(A(n=1))

    [a], [b], [c] = envelopes(A), envelopes(B), envelopes(C)
    assert_root(a)
    assert_child(b, parent_id=a.id, correlation_id=a.id)
    assert_child(c, parent_id=b.id, correlation_id=a.id)


def test_three_levels_without_observing_the_root(bus, shape):
    @bus.subscribe
    async def on_a(event: A) -> None:
        await bus.apublish(B(n=event.n))

    @bus.subscribe
    async def on_b(event: B) -> None:
        await bus.apublish(C(n=event.n))

    with observing(bus, shape, watch=(B, C)) as envelopes:
        asyncio.run(bus.apublish(A(n=1)))

    [b], [c] = envelopes(B), envelopes(C)
    assert b.causation_id is not None
    assert b.correlation_id == b.causation_id
    assert_child(c, parent_id=b.id, correlation_id=b.correlation_id)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unobserved_middle_event_passes_the_correlation_on(bus, shape, mode):
    """B has only plain handlers (the cheapest tracked path), yet C still finds A."""
    if mode == "sync":

        @bus.subscribe
        def on_a(event: A) -> None:
            bus.publish(B(n=event.n))

        @bus.subscribe
        def on_b(event: B) -> None:
            bus.publish(C(n=event.n))

    else:

        @bus.subscribe
        async def on_a_async(event: A) -> None:
            await bus.apublish(B(n=event.n))

        @bus.subscribe
        async def on_b_async(event: B) -> None:
            await bus.apublish(C(n=event.n))

    with observing(bus, shape, watch=(A, C)) as envelopes:
        if mode == "sync":
            bus.publish(A(n=1))
        else:
            asyncio.run(bus.apublish(A(n=1)))

    [a], [c] = envelopes(A), envelopes(C)
    assert_root(a)
    assert c.correlation_id == a.id
    assert c.causation_id is not None
    assert c.causation_id not in (a.id, c.id)  # B's id: C's cause is B, not A


def test_two_children_share_their_cause(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=1))
        bus.publish(B(n=2))

    with observing(bus, shape, watch=(B,)) as envelopes:
        bus.publish(A())

    first, second = envelopes(B)
    assert (first.event, second.event) == (B(n=1), B(n=2))
    assert first.causation_id is not None
    assert first.causation_id == second.causation_id
    assert first.correlation_id == second.correlation_id == first.causation_id
    assert first.id != second.id


def test_two_root_publishes_are_unrelated(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=event.n))

    with observing(bus, shape, watch=(B,)) as envelopes:
        bus.publish(A(n=1))
        bus.publish(A(n=2))

    first, second = envelopes(B)
    assert first.causation_id != second.causation_id
    assert first.correlation_id != second.correlation_id


# -- no leaks ---------------------------------------------------------------------------


def test_a_publish_after_the_handler_returned_is_a_root(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=1))

    with observing(bus, shape, watch=(B,)) as envelopes:
        bus.publish(A())
        bus.publish(B(n=2))

    child, top_level = envelopes(B)
    assert child.causation_id is not None
    assert top_level.event == B(n=2)
    assert_root(top_level)


def test_a_publish_after_a_failed_handler_is_a_root(bus, shape):
    @bus.subscribe
    def on_a(event: A) -> None:
        bus.publish(B(n=1))
        raise RuntimeError("handler failed")

    with observing(bus, shape, watch=(B,)) as envelopes:
        with pytest.raises(RuntimeError, match="handler failed"):
            bus.publish(A())
        bus.publish(B(n=2))

    child, top_level = envelopes(B)
    assert child.causation_id is not None
    assert_root(top_level)


def test_a_publish_after_apublish_returned_is_a_root(bus, shape):
    @bus.subscribe
    async def on_a(event: A) -> None:
        await bus.apublish(B(n=1))

    async def main() -> None:
        await bus.apublish(A())
        await bus.apublish(B(n=2))
        bus.publish(B(n=3))

    with observing(bus, shape, watch=(B,)) as envelopes:
        asyncio.run(main())

    child, second, third = envelopes(B)
    assert child.causation_id is not None
    assert_root(second)
    assert_root(third)


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_tasks_each_link_to_their_own_cause(bus, shape):
    parent_ids: dict[int, uuid.UUID] = {}

    @bus.subscribe
    async def on_a(event: A, envelope: Envelope) -> None:
        parent_ids[event.n] = envelope.id
        for _ in range(5):
            await asyncio.sleep(0)
        await bus.apublish(B(n=event.n))

    async def main() -> None:
        await asyncio.gather(*(bus.apublish(A(n=n)) for n in (1, 2, 3)))

    with observing(bus, shape, watch=(B,)) as envelopes:
        asyncio.run(main())

    children = {env.event.n: env for env in envelopes(B)}
    assert sorted(children) == [1, 2, 3]
    assert len(set(parent_ids.values())) == 3
    for n, child in children.items():
        assert_child(child, parent_id=parent_ids[n], correlation_id=parent_ids[n])


def test_concurrent_tasks_with_lazy_parent_envelopes(bus, shape):
    """The parents' envelopes are built only when the children need them."""

    @bus.subscribe
    async def on_a(event: A) -> None:
        for _ in range(5):
            await asyncio.sleep(0)
        await bus.apublish(B(n=event.n))

    async def main() -> None:
        await asyncio.gather(bus.apublish(A(n=1)), bus.apublish(A(n=2)))

    with observing(bus, shape, watch=(A, B)) as envelopes:
        asyncio.run(main())

    children = {env.event.n: env for env in envelopes(B)}
    assert sorted(children) == [1, 2]
    assert children[1].causation_id != children[2].causation_id
    if shape != "envelope_handlers":
        parents = {env.event.n: env for env in envelopes(A)}
        for n in (1, 2):
            assert_child(children[n], parent_id=parents[n].id, correlation_id=parents[n].id)


def test_concurrent_threads_each_link_to_their_own_cause(bus, shape):
    parent_ids: dict[int, uuid.UUID] = {}
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    @bus.subscribe
    def on_a(event: A, envelope: Envelope) -> None:
        parent_ids[event.n] = envelope.id
        barrier.wait(timeout=10)  # both publications are in flight here
        bus.publish(B(n=event.n))

    def worker(n: int) -> None:
        try:
            bus.publish(A(n=n))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    with observing(bus, shape, watch=(B,)) as envelopes:
        threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    assert errors == []
    children = {env.event.n: env for env in envelopes(B)}
    assert sorted(children) == [1, 2]
    assert parent_ids[1] != parent_ids[2]
    for n in (1, 2):
        assert_child(children[n], parent_id=parent_ids[n], correlation_id=parent_ids[n])


def test_concurrent_threads_with_lazy_parent_envelopes(bus, shape):
    barrier = threading.Barrier(2)

    @bus.subscribe
    def on_a(event: A) -> None:
        barrier.wait(timeout=10)
        bus.publish(B(n=event.n))

    with observing(bus, shape, watch=(A, B)) as envelopes:
        threads = [threading.Thread(target=bus.publish, args=(A(n=n),)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    children = {env.event.n: env for env in envelopes(B)}
    assert sorted(children) == [1, 2]
    assert children[1].causation_id != children[2].causation_id
    if shape != "envelope_handlers":
        parents = {env.event.n: env for env in envelopes(A)}
        for n in (1, 2):
            assert_child(children[n], parent_id=parents[n].id, correlation_id=parents[n].id)


# -- work that outlives the handler -------------------------------------------------------


def test_a_task_created_in_a_handler_links_to_the_handlers_event(bus, shape):
    parent_ids = []
    tasks = []

    async def later() -> None:
        await asyncio.sleep(0)
        await bus.apublish(B(n=2))

    @bus.subscribe
    async def on_a(event: A, envelope: Envelope) -> None:
        parent_ids.append(envelope.id)
        await bus.apublish(B(n=1))  # a sibling, published by the handler itself
        tasks.append(asyncio.create_task(later()))

    async def main() -> None:
        await bus.apublish(A())
        assert not tasks[0].done()  # B(n=2) is published after the handler returned
        await asyncio.gather(*tasks)

    with observing(bus, shape, watch=(B,)) as envelopes:
        asyncio.run(main())

    [a_id] = parent_ids
    sibling, late = envelopes(B)
    assert (sibling.event, late.event) == (B(n=1), B(n=2))
    assert_child(sibling, parent_id=a_id, correlation_id=a_id)
    assert_child(late, parent_id=a_id, correlation_id=a_id)


@pytest.mark.parametrize("task_first", [False, True], ids=["sibling-first", "task-first"])
def test_a_task_and_the_handler_agree_on_a_lazily_built_cause(bus, shape, task_first):
    """Whichever context builds the parent's envelope first, both children name it."""
    tasks = []

    async def later() -> None:
        await bus.apublish(B(n=2))

    @bus.subscribe
    async def on_a(event: A) -> None:
        if not task_first:
            await bus.apublish(B(n=1))
        tasks.append(asyncio.create_task(later()))
        if task_first:
            await asyncio.sleep(0)  # let the task publish (and build A's envelope) first
            await asyncio.sleep(0)
            await bus.apublish(B(n=1))

    async def main() -> None:
        await bus.apublish(A())
        await asyncio.gather(*tasks)

    with observing(bus, shape, watch=(A, B)) as envelopes:
        asyncio.run(main())

    assert [env.event.n for env in envelopes(B)] == ([2, 1] if task_first else [1, 2])
    children = {env.event.n: env for env in envelopes(B)}
    assert children[1].causation_id is not None
    assert children[1].causation_id == children[2].causation_id
    assert children[1].correlation_id == children[2].correlation_id
    if shape != "envelope_handlers":
        [a] = envelopes(A)
        assert children[1].causation_id == a.id


def test_a_thread_with_the_handlers_context_links_to_its_event(bus, shape):
    parent_ids = []

    @bus.subscribe
    async def on_a(event: A, envelope: Envelope) -> None:
        parent_ids.append(envelope.id)
        await asyncio.to_thread(bus.publish, B(n=1))  # to_thread copies the context

    with observing(bus, shape, watch=(B,)) as envelopes:
        asyncio.run(bus.apublish(A()))

    [a_id] = parent_ids
    [b] = envelopes(B)
    assert_child(b, parent_id=a_id, correlation_id=a_id)


def test_causation_crosses_buses_whichever_bus_tracks():
    # bus_a has nothing that sees envelopes; bus_b does. A handler on bus_a publishing on
    # bus_b must still link to its cause, and a chain A (bus_b) -> X (bus_a) -> B (bus_b)
    # must blame X, not A.
    bus_a = EventBus(registry=REGISTRY)
    bus_b = EventBus(registry=REGISTRY)
    seen: dict[str, Envelope] = {}

    @bus_b.subscribe(name="b.on_a")
    def on_a(event: A, envelope: Envelope) -> None:
        seen["a"] = envelope
        bus_a.publish(C(n=1))

    @bus_a.subscribe(name="a.on_c")
    def on_c(event: C) -> None:
        bus_b.publish(B(n=1))

    @bus_b.subscribe(name="b.on_b")
    def on_b(event: B, envelope: Envelope) -> None:
        seen["b"] = envelope

    with capture_events(bus_a) as captured_a:
        bus_b.publish(A(n=1))
    [c_envelope] = captured_a.envelopes
    assert_child(c_envelope, seen["a"].id, seen["a"].id)
    assert_child(seen["b"], c_envelope.id, seen["a"].id)

    # Without a capture, bus_a's route is the cheapest one that still tracks.
    seen.clear()
    bus_b.publish(A(n=2))
    assert seen["b"].causation_id not in (None, seen["a"].id)
    assert seen["b"].correlation_id == seen["a"].id


@pytest.fixture
def only_these_buses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the buses this test makes decide whether buses track causes: a process of the
    suite may hold a long-lived bus of another test's (the Django test project's, made
    when Django starts, with durable handlers), which tracks for as long as it lives."""
    monkeypatch.setattr(_bus, "_buses", weakref.WeakSet())


@pytest.mark.usefixtures("only_these_buses")
def test_closing_the_only_tracking_bus_stops_tracking_elsewhere():
    gc.collect()  # buses of earlier tests that nobody holds are gone
    assert not [bus for bus in _bus._buses if bus._linkers], "a live bus still tracks"
    tracking = EventBus(registry=REGISTRY)
    plain = EventBus(registry=REGISTRY)
    tracking.subscribe(Unrelated, name="durable", delivery="durable")(_ignore)
    plain.subscribe(A, name="plain.a")(_ignore)
    plain.publish(A())
    assert plain._routes[A][1] == 1  # tracked, because another bus can see envelopes
    tracking.close()
    plain.publish(A())
    assert plain._routes[A][1] == 0  # plain again


@pytest.mark.usefixtures("only_these_buses")
def test_a_tracking_bus_nobody_holds_is_freed_at_once(tmp_path):
    """Nothing the bus holds holds it back: without the cyclic collector, a forgotten bus
    is gone when its last reference is, and so is its say in whether buses track."""
    from eventbus import SQLiteOutbox

    outbox = SQLiteOutbox(tmp_path / "app.db")
    plain = EventBus(registry=REGISTRY)
    plain.subscribe(A, name="plain.a")(_ignore)
    gc.collect()
    gc.disable()
    try:
        for options in ({}, {"outbox": outbox, "relay": False}):
            tracking = EventBus(registry=REGISTRY, **options)
            tracking.subscribe(Unrelated, name="durable", delivery="durable")(_ignore)
            plain.publish(A())
            assert plain._routes[A][1] == 1  # tracked, because that bus can see envelopes
            reference = weakref.ref(tracking)
            del tracking
            assert reference() is None, f"a bus with {options} lives on in a cycle"
            assert not [bus for bus in _bus._buses if bus._linkers]
            plain._invalidate()  # what the next subscribe or hook change does
            plain.publish(A())
            assert plain._routes[A][1] == 0  # plain again
    finally:
        gc.enable()
        plain.close()
        outbox.close()
