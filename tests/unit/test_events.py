"""Declaring events: @event, the registry, names, versions and upcasters."""

import dataclasses
import re

import attrs
import pytest

import eventbus
from eventbus import (
    ConfigurationError,
    DuplicateEventError,
    EventBus,
    EventRegistry,
    EventType,
    UnknownEventError,
    event,
)


@pytest.fixture
def registry() -> EventRegistry:
    return EventRegistry()


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- @event makes a frozen, slotted, keyword-only attrs class --------------------------


def test_event_makes_a_frozen_slotted_keyword_only_attrs_class(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str
        total: int = 0

    assert attrs.has(OrderPlaced)
    assert "__slots__" in OrderPlaced.__dict__
    assert [f.name for f in attrs.fields(OrderPlaced)] == ["order_id", "total"]
    assert all(f.kw_only for f in attrs.fields(OrderPlaced))

    placed = OrderPlaced(order_id="o-1", total=3)
    assert placed.order_id == "o-1"
    assert placed.total == 3
    assert not hasattr(placed, "__dict__")
    assert placed == OrderPlaced(order_id="o-1", total=3)
    assert hash(placed) == hash(OrderPlaced(order_id="o-1", total=3))


def test_event_instances_refuse_assignment(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str

    placed = OrderPlaced(order_id="o-1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        placed.order_id = "o-2"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        placed.extra = 1  # type: ignore[attr-defined]
    assert placed.order_id == "o-1"


def test_event_instances_refuse_positional_arguments(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str

    with pytest.raises(TypeError):
        OrderPlaced("o-1")  # type: ignore[misc]


def test_event_registers_the_class_under_its_name_and_version(registry):
    @event("shop.order_placed", version=3, registry=registry)
    class OrderPlaced:
        order_id: str

    info = registry.info(OrderPlaced)
    assert info == EventType(cls=OrderPlaced, name="shop.order_placed", version=3)
    assert registry.by_name("shop.order_placed") is info
    assert OrderPlaced in registry
    assert len(registry) == 1


def test_event_leaves_other_registries_alone(registry):
    other = EventRegistry()

    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str

    assert OrderPlaced not in other
    assert len(other) == 0
    assert OrderPlaced not in eventbus.default_registry


def test_bus_without_registry_uses_the_default_registry():
    assert EventBus().registry is eventbus.default_registry
    mine = EventRegistry()
    assert EventBus(registry=mine).registry is mine


# -- existing attrs classes and dataclasses ---------------------------------------------


def test_existing_frozen_attrs_class_is_registered_as_is(registry):
    @attrs.frozen
    class Shipped:
        order_id: str

    declared = event("shop.shipped", registry=registry)(Shipped)

    assert declared is Shipped
    # Not rebuilt as keyword-only: the class keeps its own attrs options.
    assert Shipped("o-1").order_id == "o-1"
    assert registry.info(Shipped).name == "shop.shipped"


def test_existing_frozen_dataclass_is_registered_as_is(registry):
    @dataclasses.dataclass(frozen=True)
    class Shipped:
        order_id: str

    declared = event("shop.shipped", registry=registry)(Shipped)

    assert declared is Shipped
    assert not attrs.has(Shipped)
    shipped = Shipped("o-1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        shipped.order_id = "o-2"  # type: ignore[misc]
    assert registry.info(Shipped) == EventType(cls=Shipped, name="shop.shipped", version=1)


def test_mutable_attrs_class_is_refused(registry):
    @attrs.define
    class MutableThing:
        order_id: str

    with pytest.raises(ConfigurationError, match=r"MutableThing.*frozen"):
        event("shop.mutable", registry=registry)(MutableThing)
    assert MutableThing not in registry
    assert len(registry) == 0


def test_mutable_attrs_class_is_refused_by_register_too(registry):
    @attrs.define
    class MutableThing:
        order_id: str

    with pytest.raises(ConfigurationError, match=r"MutableThing.*frozen"):
        registry.register(MutableThing, "shop.mutable")
    assert len(registry) == 0


def test_mutable_attrs_class_without_fields_is_refused(registry):
    @attrs.define
    class Empty:
        pass

    with pytest.raises(ConfigurationError, match=r"Empty.*frozen"):
        registry.register(Empty, "shop.empty")


def test_mutable_attrs_class_with_a_validated_field_is_refused_with_configuration_error(
    registry,
):
    # attrs.define runs validators and converters on assignment: the frozen check must
    # still report the class as mutable, not leak the validator's TypeError.
    @attrs.define
    class Validated:
        quantity: int = attrs.field(validator=attrs.validators.instance_of(int))

    @attrs.define
    class Converted:
        quantity: int = attrs.field(converter=int)

    with pytest.raises(ConfigurationError, match=r"Validated.*frozen"):
        registry.register(Validated, "shop.validated")
    with pytest.raises(ConfigurationError, match=r"Converted.*frozen"):
        registry.register(Converted, "shop.converted")
    assert len(registry) == 0


def test_non_frozen_dataclass_is_refused(registry):
    @dataclasses.dataclass
    class MutableData:
        order_id: str

    with pytest.raises(ConfigurationError, match=r"MutableData.*frozen"):
        event("shop.mutable", registry=registry)(MutableData)
    assert MutableData not in registry


def test_register_refuses_a_plain_class(registry):
    class Plain:
        pass

    with pytest.raises(ConfigurationError, match=r"Plain is not an attrs class or a dataclass"):
        registry.register(Plain, "shop.plain")
    assert len(registry) == 0


def test_event_refuses_a_function(registry):
    def not_a_class() -> None:
        pass

    with pytest.raises(ConfigurationError, match="decorates classes"):
        event("shop.function", registry=registry)(not_a_class)  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="decorates classes"):
        registry.register(not_a_class, "shop.function")  # type: ignore[arg-type]
    assert len(registry) == 0


def test_event_used_without_a_name_is_refused(registry):
    class Forgotten:
        pass

    with pytest.raises(ConfigurationError, match="not a valid wire name"):
        event(Forgotten)  # type: ignore[arg-type]


# -- names and versions -----------------------------------------------------------------

BAD_NAMES = ["", "a b", "a..b", "a.*", ".a", "a.", "a>b", "naïve", "x" * 201, 5, None, b"a"]
GOOD_NAMES = ["a", "shop.order_placed", "Shop-1.order_placed.V2", "x" * 200]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused_by_event(registry, name):
    with pytest.raises(ConfigurationError, match="not a valid wire name"):
        event(name, registry=registry)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_are_refused_by_register(registry, name):
    @attrs.frozen
    class Thing:
        pass

    with pytest.raises(ConfigurationError, match="not a valid wire name"):
        registry.register(Thing, name)
    assert len(registry) == 0


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_names_are_accepted(registry, name):
    @event(name, registry=registry)
    class Thing:
        pass

    assert registry.by_name(name).cls is Thing


@pytest.mark.parametrize("version", [0, -1, True, False, "1", 1.0, None])
def test_invalid_versions_are_refused(registry, version):
    with pytest.raises(ConfigurationError, match=r"version must be an int >= 1"):
        event("shop.thing", version=version, registry=registry)

    @attrs.frozen
    class Thing:
        pass

    with pytest.raises(ConfigurationError, match=r"version must be an int >= 1"):
        registry.register(Thing, "shop.thing", version=version)
    assert len(registry) == 0


# -- duplicates and re-declaration --------------------------------------------------------


def test_a_name_taken_by_another_class_is_refused(registry):
    @event("shop.order_placed", registry=registry)
    class First:
        pass

    @attrs.frozen
    class Second:
        pass

    with pytest.raises(DuplicateEventError) as caught:
        registry.register(Second, "shop.order_placed")

    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert qualified(First) in message
    assert qualified(Second) in message
    assert "shop.order_placed" in message
    assert registry.by_name("shop.order_placed").cls is First
    assert Second not in registry


def test_a_name_taken_by_another_class_is_refused_by_event(registry):
    @event("shop.order_placed", registry=registry)
    class First:
        pass

    class Second:
        pass

    with pytest.raises(DuplicateEventError, match=re.escape(qualified(First))):
        event("shop.order_placed", registry=registry)(Second)
    assert registry.by_name("shop.order_placed").cls is First
    assert len(registry) == 1


def test_the_same_class_registered_twice_is_refused(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        pass

    with pytest.raises(DuplicateEventError, match=r"OrderPlaced is already registered"):
        registry.register(OrderPlaced, "shop.order_placed")
    with pytest.raises(DuplicateEventError, match=r"'shop.order_placed' \(version 1\)"):
        registry.register(OrderPlaced, "shop.other_name", version=2)

    assert registry.info(OrderPlaced) == EventType(OrderPlaced, "shop.order_placed", 1)
    with pytest.raises(UnknownEventError):
        registry.by_name("shop.other_name")
    assert len(registry) == 1


def _declare_reloaded(registry: EventRegistry, default: int) -> type:
    """Run one declaration again, as importlib.reload or a re-imported module would."""

    @event("shop.reloaded", registry=registry)
    class Reloaded:
        value: int = default

    return Reloaded


def test_re_executing_the_same_declaration_replaces_the_class(registry):
    old = _declare_reloaded(registry, 1)
    new = _declare_reloaded(registry, 2)

    assert old is not new
    assert qualified(old) == qualified(new)
    assert registry.by_name("shop.reloaded").cls is new
    assert registry.info(new).name == "shop.reloaded"
    assert new in registry
    assert old not in registry
    assert registry.get(old) is None
    assert len(registry) == 1
    assert [info.cls for info in registry] == [new]


def test_register_of_two_classes_with_one_qualified_name_replaces(registry):
    @attrs.frozen
    class Thing:
        pass

    old = Thing

    @attrs.frozen
    class Thing:  # the same declaration, executed again
        pass

    registry.register(old, "shop.thing")
    registry.register(Thing, "shop.thing")
    assert registry.by_name("shop.thing").cls is Thing
    assert old not in registry
    assert len(registry) == 1


def test_same_qualname_in_another_module_is_a_duplicate(registry):
    @attrs.frozen
    class Thing:
        pass

    old = Thing

    @attrs.frozen
    class Thing:
        pass

    Thing.__module__ = "somewhere.else"
    registry.register(old, "shop.thing")
    with pytest.raises(DuplicateEventError, match=r"somewhere\.else\..*Thing"):
        registry.register(Thing, "shop.thing")
    assert registry.by_name("shop.thing").cls is old


# -- lookups ----------------------------------------------------------------------------


def test_registry_lookups(registry):
    @event("c.third", registry=registry)
    class Third:
        pass

    @event("a.first", version=2, registry=registry)
    class First:
        pass

    @event("b.second", registry=registry)
    class Second:
        pass

    class NotAnEvent:
        pass

    assert registry.info(First) == EventType(cls=First, name="a.first", version=2)
    assert registry.get(First) == EventType(cls=First, name="a.first", version=2)
    assert registry.by_name("b.second") == EventType(cls=Second, name="b.second", version=1)
    assert registry.get(NotAnEvent) is None
    assert First in registry
    assert NotAnEvent not in registry
    assert First() not in registry  # an instance is not its class
    assert "a.first" not in registry  # membership is by class, not name
    assert len(registry) == 3
    assert [info.name for info in registry] == ["a.first", "b.second", "c.third"]
    assert [info.cls for info in registry] == [First, Second, Third]
    assert set(registry.names()) == {"a.first", "b.second", "c.third"}


def test_registry_names_is_a_copy(registry):
    @event("a.first", registry=registry)
    class First:
        pass

    names = registry.names()
    names.pop("a.first")  # type: ignore[attr-defined]
    assert registry.by_name("a.first").cls is First


def test_empty_registry():
    registry = EventRegistry()
    assert len(registry) == 0
    assert list(registry) == []


def test_info_of_an_unknown_class_is_an_unknown_event_error(registry):
    class Stranger:
        pass

    with pytest.raises(UnknownEventError, match=r"Stranger.*not a registered event") as caught:
        registry.info(Stranger)
    assert "@eventbus.event(" in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, LookupError)
    with pytest.raises(UnknownEventError):
        registry.info([])  # type: ignore[arg-type]


def test_by_name_of_an_unknown_name_is_an_unknown_event_error(registry):
    with pytest.raises(UnknownEventError, match=r"no event is registered under the name 'nope'"):
        registry.by_name("nope")
    with pytest.raises(UnknownEventError):
        registry.by_name([])  # type: ignore[arg-type]


# -- upcasters --------------------------------------------------------------------------


def _item_v3(registry: EventRegistry) -> type:
    @event("shop.item", version=3, registry=registry)
    class Item:
        sku: str
        quantity: int
        unit: str

    return Item


def test_upcasters_chain_step_by_step(registry):
    item = _item_v3(registry)
    calls = []

    @registry.upcaster("shop.item", from_version=1)
    def v1_to_v2(data):
        calls.append(("v1", dict(data)))
        return {"sku": data["code"], "quantity": data["quantity"]}

    @registry.upcaster("shop.item", from_version=2)
    def v2_to_v3(data):
        calls.append(("v2", dict(data)))
        return {**data, "unit": "each"}

    lifted = registry.upcast("shop.item", 1, {"code": "X-1", "quantity": 2})

    assert lifted == {"sku": "X-1", "quantity": 2, "unit": "each"}
    assert calls == [
        ("v1", {"code": "X-1", "quantity": 2}),
        ("v2", {"sku": "X-1", "quantity": 2}),
    ]
    assert item(**lifted) == item(sku="X-1", quantity=2, unit="each")

    calls.clear()
    assert registry.upcast("shop.item", 2, {"sku": "Y", "quantity": 1}) == {
        "sku": "Y",
        "quantity": 1,
        "unit": "each",
    }
    assert [step for step, _ in calls] == ["v2"]

    calls.clear()
    current = {"sku": "Z", "quantity": 5, "unit": "box"}
    assert registry.upcast("shop.item", 3, current) == current
    assert calls == []


def test_upcaster_decorator_returns_the_function(registry):
    _item_v3(registry)

    def step(data):
        return data

    assert registry.upcaster("shop.item", from_version=1)(step) is step


def test_a_missing_upcaster_step_names_the_fix(registry):
    _item_v3(registry)

    @registry.upcaster("shop.item", from_version=1)
    def v1_to_v2(data):
        return {**data, "quantity": 1}

    with pytest.raises(UnknownEventError) as caught:
        registry.upcast("shop.item", 1, {"sku": "X"})
    message = str(caught.value)
    assert "from version 2 to 3" in message
    assert "@upcaster('shop.item', from_version=2)" in message


def test_a_version_newer_than_registered_is_refused(registry):
    _item_v3(registry)
    with pytest.raises(UnknownEventError, match=r"version 4 is newer.*\(version 3\)") as caught:
        registry.upcast("shop.item", 4, {"sku": "X"})
    assert "deploy consumers before producers" in str(caught.value)


def test_upcasting_an_unknown_name_is_refused(registry):
    with pytest.raises(UnknownEventError, match=r"'shop\.unknown'"):
        registry.upcast("shop.unknown", 1, {})


def test_a_duplicate_upcaster_is_refused_and_the_first_kept(registry):
    _item_v3(registry)

    @registry.upcaster("shop.item", from_version=2)
    def first(data):
        return {**data, "unit": "first"}

    def second(data):
        return {**data, "unit": "second"}

    with pytest.raises(ConfigurationError, match=r"'shop.item' from version 2 is already"):
        registry.upcaster("shop.item", from_version=2)(second)

    assert registry.upcast("shop.item", 2, {"sku": "X", "quantity": 1})["unit"] == "first"


def test_an_upcaster_returning_a_non_dict_is_refused(registry):
    _item_v3(registry)

    @registry.upcaster("shop.item", from_version=1)
    def broken(data):
        return list(data.items())

    with pytest.raises(ConfigurationError, match=r"from version 1 returned list, not a dict"):
        registry.upcast("shop.item", 1, {"sku": "X"})


@pytest.mark.parametrize("from_version", [0, -1, True, "1"])
def test_upcaster_with_an_invalid_from_version_is_refused(registry, from_version):
    with pytest.raises(ConfigurationError, match="from_version must be an int >= 1"):
        registry.upcaster("shop.item", from_version=from_version)


def test_upcaster_with_an_invalid_name_or_target_is_refused(registry):
    with pytest.raises(ConfigurationError, match="not a valid wire name"):
        registry.upcaster("shop item", from_version=1)
    with pytest.raises(ConfigurationError, match="must be callable"):
        registry.upcaster("shop.item", from_version=1)("not callable")  # type: ignore[arg-type]


# -- subclasses -------------------------------------------------------------------------


def test_a_subclass_event_declared_with_its_own_event(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str

    @event("shop.rush_order_placed", version=2, registry=registry)
    class RushOrderPlaced(OrderPlaced):
        deadline: str

    rush = RushOrderPlaced(order_id="o-1", deadline="today")

    assert issubclass(RushOrderPlaced, OrderPlaced)
    assert isinstance(rush, OrderPlaced)
    assert (rush.order_id, rush.deadline) == ("o-1", "today")
    assert [f.name for f in attrs.fields(RushOrderPlaced)] == ["order_id", "deadline"]
    assert "__slots__" in RushOrderPlaced.__dict__
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rush.deadline = "tomorrow"  # type: ignore[misc]
    with pytest.raises(TypeError):
        RushOrderPlaced("o-1", "today")  # type: ignore[misc]
    assert registry.info(RushOrderPlaced) == EventType(
        cls=RushOrderPlaced, name="shop.rush_order_placed", version=2
    )
    assert registry.info(OrderPlaced).name == "shop.order_placed"


def test_an_undecorated_subclass_is_not_an_event(registry):
    @event("shop.order_placed", registry=registry)
    class OrderPlaced:
        order_id: str

    class Undeclared(OrderPlaced):
        pass

    assert Undeclared not in registry
    with pytest.raises(UnknownEventError, match="Undeclared"):
        registry.info(Undeclared)
    with pytest.raises(ConfigurationError, match="not an attrs class or a dataclass"):
        registry.register(Undeclared, "shop.undeclared")


def test_lookups_of_unhashable_things_say_not_registered():
    registry = EventRegistry()
    assert registry.get([]) is None  # type: ignore[arg-type]
    assert [] not in registry
    with pytest.raises(UnknownEventError):
        registry.info([])  # type: ignore[arg-type]
