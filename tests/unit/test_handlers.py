"""Subscribing handlers: event types from annotations, signatures, names, deliveries."""

import __future__

import asyncio
import functools
from typing import Optional, Union

import pytest

from eventbus import (
    ConfigurationError,
    DuplicateHandlerError,
    Envelope,
    EventBus,
    EventRegistry,
    Handler,
    HandlerSignatureError,
    event,
)

REGISTRY = EventRegistry()


@event("handlers.a", registry=REGISTRY)
class A:
    n: int = 0


@event("handlers.b", registry=REGISTRY)
class B:
    n: int = 0


@event("handlers.a_child", registry=REGISTRY)
class AChild(A):
    pass


@pytest.fixture
def bus() -> EventBus:
    return EventBus(registry=REGISTRY)


def names(handlers: tuple[Handler, ...]) -> list[str]:
    return [h.name for h in handlers]


# -- the event type ---------------------------------------------------------------------


def test_event_type_comes_from_the_annotation(bus):
    seen = []

    def on_a(event: A) -> None:
        seen.append(event)

    bus.subscribe(on_a)

    [handler] = bus.handlers_for(A)
    assert handler.fn is on_a
    assert handler.event_types == (A,)
    assert handler.name == f"{__name__}.{on_a.__qualname__}"
    assert handler.delivery == "inline"
    assert handler.is_async is False
    assert handler.wants_envelope is False
    assert bus.handlers_for(B) == ()
    bus.publish(A(n=1))
    bus.publish(B(n=2))
    assert seen == [A(n=1)]


def test_subscribe_returns_the_function_unchanged(bus):
    def on_a(event: A) -> None:
        pass

    def on_b(event: B) -> None:
        pass

    def on_b_too(event) -> None:
        pass

    assert bus.subscribe(on_a) is on_a
    assert bus.subscribe(name="b")(on_b) is on_b
    assert bus.subscribe(B, name="b-too")(on_b_too) is on_b_too


def test_pep604_union_annotation_subscribes_to_each_member(bus):
    seen = []

    @bus.subscribe
    def on_either(event: A | B) -> None:
        seen.append(event)

    assert names(bus.handlers_for(A)) == [f"{__name__}.{on_either.__qualname__}"]
    assert names(bus.handlers_for(B)) == [f"{__name__}.{on_either.__qualname__}"]
    assert bus.handlers_for(A)[0].event_types == (A, B)
    bus.publish(A(n=1))
    bus.publish(B(n=2))
    assert seen == [A(n=1), B(n=2)]


def test_typing_union_annotation_subscribes_to_each_member(bus):
    seen = []

    @bus.subscribe
    def on_either(event: Union[A, B]) -> None:  # noqa: UP007 - the typing spelling on purpose
        seen.append(event)

    assert [h.fn for h in bus.handlers_for(A)] == [on_either]
    assert [h.fn for h in bus.handlers_for(B)] == [on_either]
    bus.publish(B(n=2))
    bus.publish(A(n=1))
    assert seen == [B(n=2), A(n=1)]


def test_a_repeated_union_member_counts_once(bus):
    @bus.subscribe
    def on_a(event: A | A) -> None:  # type: ignore[valid-type] # noqa: PYI016
        pass

    assert bus.handlers_for(A)[0].event_types == (A,)


def test_explicit_event_type(bus):
    seen = []

    @bus.subscribe(A)
    def on_anything(event) -> None:
        seen.append(event)

    assert [h.event_types for h in bus.handlers_for(A)] == [(A,)]
    bus.publish(A(n=1))
    assert seen == [A(n=1)]


def test_explicit_pep604_union(bus):
    @bus.subscribe(A | B)
    def on_either(event) -> None:
        pass

    assert [h.fn for h in bus.handlers_for(A)] == [on_either]
    assert [h.fn for h in bus.handlers_for(B)] == [on_either]


def test_explicit_typing_union(bus):
    def on_either(event) -> None:
        pass

    bus.subscribe(Union[A, B])(on_either)  # noqa: UP007 - the typing spelling on purpose

    assert [h.fn for h in bus.handlers_for(A)] == [on_either]
    assert [h.fn for h in bus.handlers_for(B)] == [on_either]


def test_explicit_type_may_narrow_the_annotation(bus):
    @bus.subscribe(AChild)
    def on_child(event: A) -> None:
        pass

    @bus.subscribe(A)
    def on_object(event: object) -> None:
        pass

    assert bus.handlers_for(AChild)[0].event_types == (AChild,)
    assert [h.fn for h in bus.handlers_for(A)] == [on_object]


def test_explicit_type_that_disagrees_with_the_annotation_is_refused(bus):
    def on_a(event: A) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"subscribed to B.*annotated A.*agree"):
        bus.subscribe(B)(on_a)
    with pytest.raises(HandlerSignatureError, match=r"subscribed to B"):
        bus.subscribe(A | B)(on_a)
    # A base is not acceptable where the handler asks for a subclass.
    with pytest.raises(HandlerSignatureError, match=r"subscribed to A.*AChild"):
        bus.subscribe(A)(_on_child)
    assert bus.handlers == ()


def _on_child(event: AChild) -> None:
    pass


def test_no_annotation_is_refused(bus):
    def on_something(event) -> None:
        pass

    with pytest.raises(
        HandlerSignatureError, match=r"no annotation on its first parameter 'event'"
    ):
        bus.subscribe(on_something)
    with pytest.raises(HandlerSignatureError, match="annotat"):
        bus.subscribe(name="named")(on_something)
    assert bus.handlers == ()


def test_no_parameters_is_refused(bus):
    def takes_nothing() -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="takes no parameters"):
        bus.subscribe(takes_nothing)
    with pytest.raises(HandlerSignatureError, match="takes no parameters"):
        bus.subscribe(A)(takes_nothing)
    assert bus.handlers == ()


def test_keyword_only_event_parameter_is_refused(bus):
    def keyword_only(*, event: A) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="first positional parameter"):
        bus.subscribe(keyword_only)


def test_optional_annotation_is_refused(bus):
    def on_maybe(event: Optional[A]) -> None:  # noqa: UP045 - the typing spelling on purpose
        pass

    def on_maybe_pep604(event: A | None) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="None is not an event"):
        bus.subscribe(on_maybe)
    with pytest.raises(HandlerSignatureError, match="None is not an event"):
        bus.subscribe(on_maybe_pep604)
    assert bus.handlers == ()


def test_explicit_optional_type_is_refused_for_the_none(bus):
    def on_maybe(event) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match="None is not an event"):
        bus.subscribe(A | None)(on_maybe)
    with pytest.raises(HandlerSignatureError, match="None is not an event"):
        bus.subscribe(Optional[A])(on_maybe)  # noqa: UP045
    assert bus.handlers == ()


@pytest.mark.parametrize(
    ("annotation", "fragment"),
    [
        (int, "int is a builtin type"),
        (str, "str is a builtin type"),
        (list[int], r"list\[int\] is not an event class"),
        (A | int, "int is a builtin type"),
    ],
)
def test_non_event_annotations_are_refused(bus, annotation, fragment):
    def handler(event) -> None:
        pass

    handler.__annotations__ = {"event": annotation}
    with pytest.raises(HandlerSignatureError, match=fragment):
        bus.subscribe(handler)
    assert bus.handlers == ()


def test_object_annotation_is_accepted(bus):
    @bus.subscribe
    def on_everything(event: object) -> None:
        pass

    assert bus.handlers_for(A)[0].event_types == (object,)
    assert [h.fn for h in bus.handlers_for(B)] == [on_everything]


def test_a_class_is_not_a_handler(bus):
    with pytest.raises(HandlerSignatureError, match="must be a function"):
        bus.subscribe(A)(B)
    assert bus.handlers == ()


# -- forward references -----------------------------------------------------------------


def test_unresolvable_quoted_annotation_is_refused_naming_it(bus):
    def on_missing(event: "Missing") -> None:  # type: ignore[name-defined] # noqa: F821
        pass

    with pytest.raises(HandlerSignatureError, match=r"cannot resolve the annotation 'Missing'"):
        bus.subscribe(on_missing)
    assert bus.handlers == ()


def test_unresolvable_annotation_with_an_explicit_type_works(bus):
    seen = []

    def on_missing(event: "Missing") -> None:  # type: ignore[name-defined] # noqa: F821
        seen.append(event)

    bus.subscribe(A)(on_missing)

    assert [h.fn for h in bus.handlers_for(A)] == [on_missing]
    bus.publish(A(n=3))
    assert seen == [A(n=3)]


FUTURE_MODULE = """
def on_a(event: A, envelope: Envelope) -> None:
    seen.append((event, envelope))

def on_missing(event: Missing) -> None:
    seen.append(event)
"""


def _future_module() -> dict:
    """Compile handlers as a module with ``from __future__ import annotations`` would."""
    namespace: dict = {"__name__": "future_handlers", "A": A, "Envelope": Envelope, "seen": []}
    code = compile(
        FUTURE_MODULE,
        "future_handlers.py",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, namespace)
    return namespace


def test_postponed_annotations_resolve_in_the_module_globals(bus):
    module = _future_module()
    assert module["on_a"].__annotations__["event"] == "A"

    bus.subscribe(module["on_a"])

    [handler] = bus.handlers_for(A)
    assert handler.name == "future_handlers.on_a"
    assert handler.wants_envelope is True
    bus.publish(A(n=1))
    [(seen_event, envelope)] = module["seen"]
    assert seen_event == A(n=1)
    assert envelope.event is seen_event


def test_postponed_unresolvable_annotation_is_refused_naming_it(bus):
    module = _future_module()

    with pytest.raises(HandlerSignatureError, match=r"'Missing'.*future_handlers"):
        bus.subscribe(module["on_missing"])

    bus.subscribe(A)(module["on_missing"])
    bus.publish(A(n=2))
    assert module["seen"] == [A(n=2)]


# -- kinds of callables ---------------------------------------------------------------


def test_lambda_with_an_explicit_type(bus):
    seen = []
    bus.subscribe(A)(lambda event: seen.append(event))  # noqa: PLW0108

    bus.publish(A(n=1))
    assert seen == [A(n=1)]


def test_lambda_without_a_type_is_refused(bus):
    with pytest.raises(HandlerSignatureError, match="annotat"):
        bus.subscribe(lambda event: None)


class Listener:
    def __init__(self) -> None:
        self.seen: list[object] = []

    def on_a(self, event: A) -> None:
        self.seen.append(event)

    async def on_b(self, event: B) -> None:
        self.seen.append(event)


def test_bound_method_reads_its_annotation_and_is_named_after_its_class(bus):
    listener = Listener()
    bus.subscribe(listener.on_a)

    [handler] = bus.handlers_for(A)
    assert handler.name == f"{__name__}.Listener.on_a"
    assert handler.event_types == (A,)
    assert handler.fn == listener.on_a
    bus.publish(A(n=1))
    assert listener.seen == [A(n=1)]


def test_async_bound_method(bus):
    listener = Listener()
    bus.subscribe(listener.on_b)

    [handler] = bus.handlers_for(B)
    assert handler.is_async is True
    asyncio.run(bus.apublish(B(n=2)))
    assert listener.seen == [B(n=2)]


def test_bound_methods_of_two_instances_need_names(bus):
    first, second = Listener(), Listener()
    bus.subscribe(first.on_a)

    with pytest.raises(DuplicateHandlerError, match=r"Listener\.on_a"):
        bus.subscribe(second.on_a)

    bus.subscribe(name="second-listener")(second.on_a)
    bus.publish(A(n=1))
    assert first.seen == [A(n=1)]
    assert second.seen == [A(n=1)]

    bus.unsubscribe(second.on_a)
    bus.publish(A(n=2))
    assert first.seen == [A(n=1), A(n=2)]
    assert second.seen == [A(n=1)]


class CallableHandler:
    def __init__(self) -> None:
        self.seen: list[object] = []

    def __call__(self, event: A) -> None:
        self.seen.append(event)


class AsyncCallableHandler:
    def __init__(self) -> None:
        self.seen: list[object] = []

    async def __call__(self, event: B, envelope: Envelope) -> None:
        self.seen.append((event, envelope.name))


def test_callable_object(bus):
    handler_object = CallableHandler()
    assert bus.subscribe(handler_object) is handler_object

    [handler] = bus.handlers_for(A)
    assert handler.name == f"{__name__}.CallableHandler"
    assert handler.is_async is False
    bus.publish(A(n=1))
    assert handler_object.seen == [A(n=1)]


def test_async_callable_object_taking_the_envelope(bus):
    handler_object = AsyncCallableHandler()
    bus.subscribe(handler_object)

    [handler] = bus.handlers_for(B)
    assert handler.is_async is True
    assert handler.wants_envelope is True
    asyncio.run(bus.apublish(B(n=1)))
    assert handler_object.seen == [(B(n=1), "handlers.b")]


def test_functools_partial_needs_a_name(bus):
    seen = []

    def record(into: list, event: A) -> None:
        into.append(event)

    handler = functools.partial(record, seen)

    with pytest.raises(ConfigurationError, match=r"functools\.partial: pass name="):
        bus.subscribe(A)(handler)
    assert bus.handlers == ()

    bus.subscribe(A, name="record-a")(handler)
    assert names(bus.handlers_for(A)) == ["record-a"]
    bus.publish(A(n=1))
    assert seen == [A(n=1)]


def test_generator_functions_are_refused(bus):
    def generator(event: A):
        yield event

    async def async_generator(event: A):
        yield event

    with pytest.raises(HandlerSignatureError, match="generator function"):
        bus.subscribe(generator)
    with pytest.raises(HandlerSignatureError, match="generator function"):
        bus.subscribe(async_generator)
    with pytest.raises(HandlerSignatureError, match="generator function"):
        bus.subscribe(A, name="explicit")(generator)
    assert bus.handlers == ()


def test_a_decorated_coroutine_function_is_async(bus):
    def passthrough(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    @bus.subscribe
    @passthrough
    async def on_a(event: A) -> None:
        pass

    [handler] = bus.handlers_for(A)
    assert handler.is_async is True
    assert handler.event_types == (A,)
    assert handler.name.endswith(".on_a")


def test_async_def_handlers_are_async(bus):
    async def on_a(event: A) -> None:
        pass

    def on_b(event: B) -> None:
        pass

    bus.subscribe(on_a)
    bus.subscribe(on_b)

    assert bus.handlers_for(A)[0].is_async is True
    assert bus.handlers_for(B)[0].is_async is False


# -- the envelope parameter -------------------------------------------------------------


def test_second_parameter_annotated_envelope_receives_the_envelope(bus):
    seen = []

    @bus.subscribe
    def on_a(event: A, envelope: Envelope) -> None:
        seen.append((event, envelope))

    [handler] = bus.handlers_for(A)
    assert handler.wants_envelope is True
    published = A(n=7)
    bus.publish(published)
    [(event_seen, envelope)] = seen
    assert event_seen is published
    assert isinstance(envelope, Envelope)
    assert envelope.event is published
    assert envelope.name == "handlers.a"


def test_envelope_parameter_works_for_async_handlers(bus):
    seen = []

    @bus.subscribe
    async def on_a(event: A, envelope: Envelope) -> None:
        seen.append(envelope.event)

    asyncio.run(bus.apublish(A(n=1)))
    assert seen == [A(n=1)]


def test_keyword_only_envelope_parameter_is_refused(bus):
    def on_a(event: A, *, envelope: Envelope) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"parameter 'envelope' must be positional"):
        bus.subscribe(on_a)


def test_second_required_parameter_that_is_not_an_envelope_is_refused(bus):
    def on_a(event: A, extra: int) -> None:
        pass

    def on_a_unannotated(event: A, extra) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"parameter 'extra' has no default"):
        bus.subscribe(on_a)
    with pytest.raises(HandlerSignatureError, match=r"parameter 'extra' has no default"):
        bus.subscribe(on_a_unannotated)
    assert bus.handlers == ()


def test_further_required_parameters_are_refused(bus):
    def on_a(event: A, envelope: Envelope, extra: int) -> None:
        pass

    def on_a_keyword(event: A, *, extra: int) -> None:
        pass

    with pytest.raises(HandlerSignatureError, match=r"parameter 'extra' has no default"):
        bus.subscribe(on_a)
    with pytest.raises(HandlerSignatureError, match=r"'extra'.*no default"):
        bus.subscribe(on_a_keyword)


def test_optional_extra_parameters_are_left_to_their_defaults(bus):
    seen = []

    @bus.subscribe
    def on_a(event: A, extra: int = 5, *args: object, flag: bool = True, **kw: object) -> None:
        seen.append((event, extra, args, flag, kw))

    assert bus.handlers_for(A)[0].wants_envelope is False
    bus.publish(A(n=1))
    assert seen == [(A(n=1), 5, (), True, {})]


# -- names ------------------------------------------------------------------------------


def test_duplicate_names_are_refused_and_the_first_stays(bus):
    seen = []

    @bus.subscribe(name="billing")
    def first(event: A) -> None:
        seen.append("first")

    def second(event: B) -> None:
        seen.append("second")

    with pytest.raises(DuplicateHandlerError, match=r"'billing' is already subscribed") as caught:
        bus.subscribe(name="billing")(second)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, ValueError)
    assert "name='...'" in str(caught.value)

    assert [h.fn for h in bus.handlers] == [first]
    assert bus.handlers_for(B) == ()
    bus.publish(A())
    bus.publish(B())
    assert seen == ["first"]


def test_the_same_function_twice_is_a_duplicate(bus):
    def on_a(event: A) -> None:
        pass

    bus.subscribe(on_a)
    with pytest.raises(DuplicateHandlerError):
        bus.subscribe(on_a)
    assert len(bus.handlers) == 1


def test_the_same_function_under_two_names(bus):
    seen = []

    def on_a(event: A) -> None:
        seen.append(event)

    bus.subscribe(name="one")(on_a)
    bus.subscribe(name="two")(on_a)
    bus.publish(A(n=1))
    assert seen == [A(n=1), A(n=1)]

    with pytest.raises(ConfigurationError, match=r"several names \(one, two\)"):
        bus.unsubscribe(on_a)
    bus.unsubscribe("one")
    assert names(bus.handlers) == ["two"]


@pytest.mark.parametrize("name", ["", "a\nb", "tab\there", "\x00", "del\x7f", "x" * 201, 5])
def test_invalid_names_are_refused(bus, name):
    def on_a(event: A) -> None:
        pass

    with pytest.raises(ConfigurationError, match="name must be a non-empty str"):
        bus.subscribe(name=name)(on_a)
    assert bus.handlers == ()


@pytest.mark.parametrize("name", ["billing: send receipt (v2)", "x" * 200, "ü", "a.b-c_d"])
def test_printable_names_are_accepted(bus, name):
    def on_a(event: A) -> None:
        pass

    bus.subscribe(name=name)(on_a)
    assert names(bus.handlers) == [name]


# -- deliveries -------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["", "Inline", "sync", "later", None])
def test_invalid_delivery_is_refused(bus, delivery):
    def on_a(event: A) -> None:
        pass

    with pytest.raises(ConfigurationError, match="delivery must be one of"):
        bus.subscribe(delivery=delivery)(on_a)
    assert bus.handlers == ()


@pytest.mark.parametrize("delivery", ["inline", "after_commit", "durable"])
def test_deliveries_are_accepted_at_subscribe_time(bus, delivery):
    def on_a(event: A) -> None:
        pass

    bus.subscribe(delivery=delivery)(on_a)
    [handler] = bus.handlers_for(A)
    assert handler.delivery == delivery
    assert handler.fn is on_a


# -- unsubscribing and listing ----------------------------------------------------------


def test_unsubscribe_by_function(bus):
    seen = []

    def on_a(event: A) -> None:
        seen.append(event)

    bus.subscribe(on_a)
    bus.publish(A(n=1))
    bus.unsubscribe(on_a)
    bus.publish(A(n=2))

    assert seen == [A(n=1)]
    assert bus.handlers_for(A) == ()
    assert bus.handlers == ()


def test_unsubscribe_by_name(bus):
    seen = []

    @bus.subscribe(name="only-a")
    def on_either(event: A | B) -> None:
        seen.append(event)

    bus.unsubscribe("only-a")
    bus.publish(A(n=1))
    bus.publish(B(n=1))

    assert seen == []
    assert bus.handlers_for(A) == ()
    assert bus.handlers_for(B) == ()
    # The name is free again.
    bus.subscribe(name="only-a")(on_either)
    assert names(bus.handlers) == ["only-a"]


def test_unsubscribing_an_unknown_handler_is_refused(bus):
    def on_a(event: A) -> None:
        pass

    def never_subscribed(event: A) -> None:
        pass

    bus.subscribe(on_a)
    with pytest.raises(ConfigurationError, match="no handler 'nope' is subscribed"):
        bus.unsubscribe("nope")
    with pytest.raises(ConfigurationError, match=r"no handler .*never_subscribed"):
        bus.unsubscribe(never_subscribed)

    bus.unsubscribe(on_a)
    with pytest.raises(ConfigurationError, match="no handler"):
        bus.unsubscribe(on_a)


def test_handlers_lists_every_handler_in_subscription_order(bus):
    def h1(event: B) -> None:
        pass

    def h2(event: A) -> None:
        pass

    def h3(event: A | B) -> None:
        pass

    def h4(event: object) -> None:
        pass

    for handler in (h1, h2, h3, h4):
        bus.subscribe(handler)
    assert [h.fn for h in bus.handlers] == [h1, h2, h3, h4]
    assert all(isinstance(h, Handler) for h in bus.handlers)

    bus.unsubscribe(h2)
    assert [h.fn for h in bus.handlers] == [h1, h3, h4]

    bus.subscribe(h2)
    assert [h.fn for h in bus.handlers] == [h1, h3, h4, h2]


def test_handlers_for_takes_a_class(bus):
    with pytest.raises(TypeError, match="takes an event class"):
        bus.handlers_for(A())  # type: ignore[arg-type]


def test_functools_partial_takes_its_event_type_from_the_wrapped_function(bus):
    seen = []

    def record(into: list, event: A) -> None:
        into.append(event)

    bus.subscribe(functools.partial(record, seen), name="partial-record")
    [handler] = bus.handlers_for(A)
    assert handler.event_types == (A,)
    bus.publish(A(n=3))
    assert seen == [A(n=3)]


@pytest.mark.parametrize("name", [" lead", "trail ", "\tboth\t"])
def test_handler_names_with_spaces_at_either_end_are_refused(bus, name):
    def handler(event: A) -> None: ...

    with pytest.raises(ConfigurationError, match="without spaces at either end"):
        bus.subscribe(handler, name=name)
