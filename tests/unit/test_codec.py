"""JSONCodec: exact round trips of every supported field type, and strict refusal of bad input."""

# No `from __future__ import annotations` here: the event classes below are evaluated the
# way most user code is, and the codec must resolve their annotations itself.

import dataclasses
import enum
import json
import math
import pickle
import sys
import typing
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus._codec import JSONCodec
from eventbus._envelope import Envelope, uuid7
from eventbus._events import EventRegistry, event
from eventbus.errors import (
    ConfigurationError,
    DecodeError,
    EncodeError,
    SerializationError,
    UnknownEventError,
)

REGISTRY = EventRegistry()
PROPERTY = settings(database=None, deadline=None, max_examples=150)


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"
    SLOW = "slow"


class Pair(enum.Enum):
    """Values that are themselves containers, written recursively."""

    ONE = (1, "one")
    TWO = (2, "two")


class Perm(enum.IntFlag):
    R = 4
    W = 2
    X = 1


@attrs.frozen
class Money:
    amount: Decimal
    currency: str


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    price: Money


@attrs.frozen
class Node:
    value: int
    children: "tuple[Node, ...]" = ()


@event("test.everything", registry=REGISTRY)
class Everything:
    text: str
    count: int
    ratio: float
    flag: bool
    nothing: None
    amount: Decimal
    at: datetime
    day: date
    ident: uuid.UUID
    color: Color
    level: Level
    mode: Mode
    pair: Pair
    perm: Perm
    money: Money
    lines: list[Line]
    coords: tuple[float, float]
    numbers: tuple[int, ...]
    by_str: dict[str, int]
    by_int: dict[int, str]
    by_uuid: dict[uuid.UUID, bool]
    by_color: dict[Color, int]
    by_level: dict[Level, str]
    by_day: dict[date, str]
    by_amount: dict[Decimal, str]
    ids: set[uuid.UUID]
    frozen: frozenset[int]
    maybe: int | None
    either: int | str
    choice: Literal["a", "b", 3]
    names: Sequence[str]
    prices: Mapping[str, Decimal]
    anything: Any
    tree: Node
    stamp: datetime | None = None


def _record(note: str) -> str:
    UNPICKLED.append(note)
    return note


UNPICKLED: list[str] = []


class Booby:
    """Unpickling this calls _record: proof that a pickle payload was never loaded."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record, ("unpickled",))


@event("test.order", registry=REGISTRY)
class Order:
    order_id: uuid.UUID
    customer: str
    total: Decimal
    quantity: int
    weight: float
    placed_at: datetime
    placed_on: date
    color: Color
    lines: list[Line] = attrs.field(factory=list)
    extra: Any = None


@event("test.private", registry=REGISTRY)
@attrs.frozen(kw_only=True)
class WithPrivate:
    _secret: str
    name: str
    note: str = "none"
    length: int = attrs.field(init=False)

    @length.default
    def _length(self) -> int:
        return len(self.name)


@event("test.dataclass", registry=REGISTRY)
@dataclasses.dataclass(frozen=True)
class DataclassEvent:
    x: int
    tags: list[str] = dataclasses.field(default_factory=list)
    derived: int = dataclasses.field(init=False, default=7)


@event("test.validated", registry=REGISTRY)
class Validated:
    qty: int = attrs.field(validator=attrs.validators.ge(1))


@event("test.upcast", version=2, registry=REGISTRY)
class Renamed:
    full_name: str
    age: int


@REGISTRY.upcaster("test.upcast", from_version=1)
def _upcast_renamed(data: dict[str, Any]) -> dict[str, Any]:
    return {"full_name": f"{data.pop('first')} {data.pop('last')}", "age": data["age"]}


@event("test.no_upcaster", version=2, registry=REGISTRY)
class NoUpcaster:
    x: int


class Plain:
    """Neither attrs nor a dataclass: the codec cannot know its fields."""


@event("test.unsupported", registry=REGISTRY)
class HasPlain:
    thing: Plain


@event("test.unresolvable", registry=REGISTRY)
class Unresolvable:
    fine: int
    ghost: "Missing"  # type: ignore[name-defined]  # noqa: F821


@event("test.union", registry=REGISTRY)
class UnionEvent:
    value: int | str | list[int]
    number: float | str


@event("test.deep", registry=REGISTRY)
class Deep:
    tree: Node


@event("test.any", registry=REGISTRY)
class AnyPayload:
    payload: Any


@attrs.frozen
class NotRegistered:
    x: int


# --- helpers -------------------------------------------------------------------------------

CODEC = JSONCodec(REGISTRY)
OFFSETS = st.integers(min_value=-86399, max_value=86399).map(
    lambda seconds: timezone(timedelta(seconds=seconds))
)
AWARE = st.datetimes(timezones=OFFSETS)
DECIMALS = st.decimals(allow_nan=False, allow_infinity=False).filter(lambda d: len(str(d)) <= 100)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | FLOATS | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)
MONEY = st.builds(Money, amount=DECIMALS, currency=st.text(max_size=3))
LINES = st.builds(Line, sku=st.text(), qty=st.integers(), price=MONEY)
NODES = st.recursive(
    st.builds(Node, value=st.integers(), children=st.just(())),
    lambda inner: st.builds(
        Node, value=st.integers(), children=st.lists(inner, max_size=3).map(tuple)
    ),
    max_leaves=8,
)
EVERYTHING = st.builds(
    Everything,
    text=st.text(),
    count=st.integers(),
    ratio=FLOATS,
    flag=st.booleans(),
    nothing=st.none(),
    amount=DECIMALS,
    at=AWARE,
    day=st.dates(),
    ident=st.uuids(),
    color=st.sampled_from(Color),
    level=st.sampled_from(Level),
    mode=st.sampled_from(Mode),
    pair=st.sampled_from(Pair),
    perm=st.integers(min_value=0, max_value=7).map(Perm),
    money=MONEY,
    lines=st.lists(LINES, max_size=3),
    coords=st.tuples(FLOATS, FLOATS),
    numbers=st.lists(st.integers(), max_size=4).map(tuple),
    by_str=st.dictionaries(st.text(), st.integers(), max_size=3),
    by_int=st.dictionaries(st.integers(), st.text(), max_size=3),
    by_uuid=st.dictionaries(st.uuids(), st.booleans(), max_size=3),
    by_color=st.dictionaries(st.sampled_from(Color), st.integers(), max_size=2),
    by_level=st.dictionaries(st.sampled_from(Level), st.text(), max_size=2),
    by_day=st.dictionaries(st.dates(), st.text(), max_size=3),
    by_amount=st.dictionaries(DECIMALS, st.text(), max_size=3),
    ids=st.sets(st.uuids(), max_size=3),
    frozen=st.frozensets(st.integers(), max_size=4),
    maybe=st.none() | st.integers(),
    either=st.integers() | st.text(),
    choice=st.sampled_from(["a", "b", 3]),
    names=st.lists(st.text(), max_size=3).map(tuple),
    prices=st.dictionaries(st.text(), DECIMALS, max_size=3),
    anything=JSON_VALUES,
    tree=NODES,
    stamp=st.none() | AWARE,
)


def assert_same(left: Any, right: Any, path: str = "event") -> None:
    """Equal values of the same types all the way down (== alone says 1 == 1.0 == True)."""
    assert type(left) is type(right), f"{path}: {type(left)} is not {type(right)}"
    if attrs.has(type(left)):
        for field in attrs.fields(type(left)):
            assert_same(
                getattr(left, field.name), getattr(right, field.name), f"{path}.{field.name}"
            )
    elif dataclasses.is_dataclass(left):
        for field in dataclasses.fields(left):
            assert_same(
                getattr(left, field.name), getattr(right, field.name), f"{path}.{field.name}"
            )
    elif isinstance(left, (list, tuple)):
        assert len(left) == len(right), path
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(left, (dict, MappingProxyType)):
        assert len(left) == len(right), path
        for (key_a, a), (key_b, b) in zip(left.items(), right.items(), strict=True):
            assert_same(key_a, key_b, f"{path} key")
            assert_same(a, b, f"{path}[{key_a!r}]")
    elif isinstance(left, datetime):
        assert left == right, path
        assert left.utcoffset() == right.utcoffset(), path
    elif isinstance(left, Decimal):
        assert str(left) == str(right), path
    elif isinstance(left, float):
        assert left == right, path
        assert math.copysign(1.0, left) == math.copysign(1.0, right), path
    else:
        assert left == right, path


def envelope_of(event_: object, **overrides: Any) -> Envelope:
    info = REGISTRY.info(type(event_))
    fields: dict[str, Any] = {
        "id": uuid7(),
        "name": info.name,
        "version": info.version,
        "occurred_at": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        "event": event_,
        "correlation_id": uuid7(),
    }
    fields.update(overrides)
    return Envelope(**fields)


def an_order(**overrides: Any) -> Order:
    fields: dict[str, Any] = {
        "order_id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "customer": "alice",
        "total": Decimal("12.50"),
        "quantity": 3,
        "weight": 1.5,
        "placed_at": datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        "placed_on": date(2024, 5, 1),
        "color": Color.RED,
        "lines": [Line(sku=f"sku-{i}", qty=i, price=Money(Decimal(i), "EUR")) for i in range(3)],
    }
    fields.update(overrides)
    return Order(**fields)


def order_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(CODEC.encode(envelope_of(an_order())))
    return document


def dumps(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def with_data(**changes: Any) -> bytes:
    document = order_document()
    for key, value in changes.items():
        if value is KeyError:
            del document["data"][key]
        else:
            document["data"][key] = value
    return dumps(document)


def refused(data: Any, *words: str, codec: JSONCodec = CODEC) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        codec.decode(data)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return info.value


# --- round trips ---------------------------------------------------------------------------


@PROPERTY
@given(EVERYTHING)
def test_every_field_type_round_trips_exactly(original: Everything) -> None:
    envelope = envelope_of(original)

    decoded = CODEC.decode(CODEC.encode(envelope))

    assert_same(decoded.event, original)
    assert decoded.event == original


@PROPERTY
@given(EVERYTHING)
def test_encode_event_and_decode_event_round_trip(original: Everything) -> None:
    data = CODEC.encode_event(original)

    assert_same(CODEC.decode_event("test.everything", 1, json.loads(json.dumps(data))), original)


# Keys and headers are text without control characters (check_key and check_headers).
PRINTABLE = st.characters(exclude_categories=("Cc", "Cs"))


@PROPERTY
@given(
    key=st.none() | st.text(PRINTABLE, min_size=1, max_size=50),
    causation=st.none() | st.uuids(),
    headers=st.dictionaries(
        st.text(PRINTABLE, min_size=1, max_size=20), st.text(PRINTABLE, max_size=20), max_size=5
    ),
    occurred_at=AWARE,
    ids=st.tuples(st.uuids(), st.uuids()),
)
def test_every_envelope_field_round_trips(
    key: str | None,
    causation: uuid.UUID | None,
    headers: dict[str, str],
    occurred_at: datetime,
    ids: tuple[uuid.UUID, uuid.UUID],
) -> None:
    envelope = envelope_of(
        an_order(),
        id=ids[0],
        correlation_id=ids[1],
        key=key,
        causation_id=causation,
        headers=headers,
        occurred_at=occurred_at,
    )

    decoded = CODEC.decode(CODEC.encode(envelope))

    assert decoded == envelope
    assert_same(decoded.occurred_at, occurred_at)
    assert decoded.key == key
    assert decoded.causation_id == causation
    assert dict(decoded.headers) == headers
    assert decoded.id == ids[0]
    assert decoded.correlation_id == ids[1]


def test_wire_format_is_compact_json_with_every_key() -> None:
    envelope = envelope_of(
        an_order(lines=[]),
        id=uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057"),
        correlation_id=uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8058"),
        causation_id=uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8059"),
        key="order-1",
        headers={"traceparent": "00-abc"},
        occurred_at=datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
    )

    raw = CODEC.encode(envelope)

    assert isinstance(raw, bytes)
    assert b" " not in raw.replace(b"order-1", b"")  # compact separators
    assert json.loads(raw) == {
        "id": "01890a5d-ac96-774b-bcce-b302099a8057",
        "name": "test.order",
        "version": 1,
        "occurred_at": "2024-05-01T12:30:00-05:00",
        "key": "order-1",
        "correlation_id": "01890a5d-ac96-774b-bcce-b302099a8058",
        "causation_id": "01890a5d-ac96-774b-bcce-b302099a8059",
        "headers": {"traceparent": "00-abc"},
        "data": {
            "order_id": "12345678-1234-5678-1234-567812345678",
            "customer": "alice",
            "total": "12.50",
            "quantity": 3,
            "weight": 1.5,
            "placed_at": "2024-05-01T12:30:00+02:00",
            "placed_on": "2024-05-01",
            "color": "red",
            "lines": [],
            "extra": None,
        },
    }
    assert JSONCodec.content_type == "application/json"


def test_values_are_written_in_their_documented_json_forms() -> None:
    data = CODEC.encode_event(
        AnyPayload(payload={"a": [1, 2.5, None, True, "x"]}),
    )
    assert data == {"payload": {"a": [1, 2.5, None, True, "x"]}}

    union = CODEC.encode_event(UnionEvent(value=[1, 2], number=3))
    assert union == {"value": [1, 2], "number": 3.0}


def test_enums_dict_keys_and_sets_have_documented_json_forms() -> None:
    original = next_everything()
    data = CODEC.encode_event(original)

    assert data["level"] == 2
    assert data["pair"] == [2, "two"]
    assert data["perm"] == 6
    assert data["by_int"] == {"-1": "minus", "10": "ten"}
    assert data["by_color"] == {"red": 1}
    assert data["by_level"] == {"1": "low"}
    assert data["by_day"] == {"2024-02-29": "leap"}
    assert data["by_amount"] == {"1.10": "a"}
    assert data["frozen"] == [-3, 1, 2]
    assert data["coords"] == [1.0, -2.5]
    assert data["names"] == ["x", "y"]
    assert data["tree"] == {"value": 1, "children": [{"value": 2, "children": []}]}
    assert_same(CODEC.decode_event("test.everything", 1, json.loads(json.dumps(data))), original)


def next_everything(**overrides: Any) -> Everything:
    fields: dict[str, Any] = {
        "text": "t",
        "count": 1,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "amount": Decimal("1.000"),
        "at": datetime(2024, 1, 1, tzinfo=UTC),
        "day": date(2024, 1, 1),
        "ident": uuid.UUID(int=1),
        "color": Color.GREEN,
        "level": Level.HIGH,
        "mode": Mode.SLOW,
        "pair": Pair.TWO,
        "perm": Perm.R | Perm.W,
        "money": Money(Decimal("9.99"), "EUR"),
        "lines": [],
        "coords": (1.0, -2.5),
        "numbers": (1, 2),
        "by_str": {"a": 1},
        "by_int": {-1: "minus", 10: "ten"},
        "by_uuid": {uuid.UUID(int=2): False},
        "by_color": {Color.RED: 1},
        "by_level": {Level.LOW: "low"},
        "by_day": {date(2024, 2, 29): "leap"},
        "by_amount": {Decimal("1.10"): "a"},
        "ids": {uuid.UUID(int=3), uuid.UUID(int=4)},
        "frozen": frozenset({2, -3, 1}),
        "maybe": None,
        "either": "s",
        "choice": 3,
        "names": ("x", "y"),
        "prices": {"p": Decimal("0.1")},
        "anything": {"k": [1, None]},
        "tree": Node(1, (Node(2),)),
    }
    fields.update(overrides)
    return Everything(**fields)


def test_sets_are_written_sorted_so_equal_sets_give_equal_bytes() -> None:
    # 1, 9 and 17 share a hash bucket, so insertion order decides iteration order.
    first = next_everything(
        ids={uuid.UUID(int=n) for n in (1, 9, 17)}, frozen=frozenset([1, 9, 17])
    )
    second = next_everything(
        ids={uuid.UUID(int=n) for n in (17, 9, 1)}, frozen=frozenset([17, 9, 1])
    )
    assert list(first.frozen) != list(second.frozen)
    assert list(first.ids) != list(second.ids)

    assert CODEC.encode(
        envelope_of(first, id=uuid.UUID(int=0), correlation_id=uuid.UUID(int=0))
    ) == (CODEC.encode(envelope_of(second, id=uuid.UUID(int=0), correlation_id=uuid.UUID(int=0))))
    data = CODEC.encode_event(first)
    assert data["frozen"] == [1, 9, 17]
    assert data["ids"] == [str(uuid.UUID(int=n)) for n in (1, 9, 17)]


def test_private_attributes_and_init_false_fields() -> None:
    original = WithPrivate(secret="s3", name="bob")

    data = CODEC.encode_event(original)
    decoded = CODEC.decode_event("test.private", 1, data)

    assert data == {"_secret": "s3", "name": "bob", "note": "none"}  # no init=False field
    assert decoded == original
    assert decoded.length == 3


def test_dataclass_events_and_defaults_for_absent_optional_fields() -> None:
    assert CODEC.encode_event(DataclassEvent(x=1, tags=["a"])) == {"x": 1, "tags": ["a"]}

    decoded = CODEC.decode_event("test.dataclass", 1, {"x": 5})

    assert decoded == DataclassEvent(x=5)
    assert decoded.tags == []
    assert decoded.derived == 7


def test_decode_accepts_bytes_bytearray_memoryview_and_str() -> None:
    envelope = envelope_of(an_order())
    raw = CODEC.encode(envelope)

    for data in (raw, bytearray(raw), memoryview(raw), raw.decode()):
        assert CODEC.decode(data) == envelope


def test_an_int_is_accepted_for_a_float_field_and_read_as_float() -> None:
    decoded = CODEC.decode(with_data(weight=2))

    assert decoded.event.weight == 2.0
    assert type(decoded.event.weight) is float


def test_lone_surrogates_round_trip_as_json_escapes() -> None:
    envelope = envelope_of(an_order(customer="a\ud800b"))

    raw = CODEC.encode(envelope)

    assert b"\\ud800" in raw
    assert CODEC.decode(raw).event.customer == "a\ud800b"


def test_non_ascii_text_is_written_as_utf8() -> None:
    raw = CODEC.encode(envelope_of(an_order(customer="Zoë 東京")))

    assert "Zoë 東京".encode() in raw
    assert CODEC.decode(raw).event.customer == "Zoë 東京"


def test_unions_encode_by_isinstance_and_decode_in_declared_order() -> None:
    for value in (5, "five", [1, 2]):
        original = UnionEvent(value=value, number="n/a")
        assert_same(CODEC.decode_event("test.union", 1, CODEC.encode_event(original)), original)

    decoded = CODEC.decode_event("test.union", 1, {"value": 1, "number": 2})
    assert_same(decoded, UnionEvent(value=1, number=2.0))

    with pytest.raises(DecodeError) as error:
        CODEC.decode_event("test.union", 1, {"value": 1.5, "number": 1})
    assert "data.value" in str(error.value)
    assert "matches no member" in str(error.value)


def test_plans_are_compiled_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = JSONCodec(REGISTRY)
    calls: list[object] = []
    real = typing.get_type_hints

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counting)
    envelope = envelope_of(an_order())
    for _ in range(5):
        codec.decode(codec.encode(envelope))

    assert calls == [Order, Line, Money]


def test_recursive_classes_round_trip() -> None:
    tree = Node(1, (Node(2, (Node(3),)), Node(4)))

    assert CODEC.decode_event("test.deep", 1, CODEC.encode_event(Deep(tree=tree))) == Deep(
        tree=tree
    )


# --- the wire format, byte for byte --------------------------------------------------------
#
# Written by the codec of 2026-12 (the standard library's json, compact, UTF-8): every
# later codec must write these bytes for these envelopes, and read them back.

ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
OTHER_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8058")
THIRD_ID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8059")
NOON = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

GOLDEN_ORDER = (
    b'{"id":"01890a5d-ac96-774b-bcce-b302099a8057","name":"test.order","version":1,'
    b'"occurred_at":"2024-05-01T12:30:00.123456+00:00","key":"order-1",'
    b'"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","causation_id":null,'
    b'"headers":{"traceparent":"00-abc","\xc3\xa9":"\xc3\xbc"},'
    b'"data":{"order_id":"12345678-1234-5678-1234-567812345678",'
    b'"customer":"Zo\xc3\xab \xe6\x9d\xb1\xe4\xba\xac \\"q\\" \\\\ \\n\\t\\u0001\x7f\xe2\x80\xa8",'
    b'"total":"12.50","quantity":3,"weight":1e+16,'
    b'"placed_at":"2024-05-01T12:30:00+02:00","placed_on":"2024-05-01","color":"red",'
    b'"lines":[{"sku":"sku-0","qty":0,"price":{"amount":"0","currency":"EUR"}},'
    b'{"sku":"sku-1","qty":1,"price":{"amount":"1","currency":"EUR"}},{"sku":"sku-2",'
    b'"qty":2,"price":{"amount":"2","currency":"EUR"}}],"extra":null}}'
)
GOLDEN_EVERYTHING = (
    b'{"id":"01890a5d-ac96-774b-bcce-b302099a8057","name":"test.everything",'
    b'"version":1,"occurred_at":"2024-05-01T12:30:00-05:00","key":null,'
    b'"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8058",'
    b'"causation_id":"01890a5d-ac96-774b-bcce-b302099a8059","headers":{},'
    b'"data":{"text":"tab\\there","count":1,"ratio":1.5e-07,"flag":true,"nothing":null,'
    b'"amount":"1.000","at":"2024-01-01T01:02:03.004500-04:59:53","day":"2024-01-01",'
    b'"ident":"00000000-0000-0000-0000-000000000001","color":"green","level":2,'
    b'"mode":"slow","pair":[2,"two"],"perm":6,"money":{"amount":"9.99",'
    b'"currency":"EUR"},"lines":[],"coords":[1e+22,-0.0],"numbers":[1,2],'
    b'"by_str":{"a":1},"by_int":{"-1":"minus","10":"ten"},'
    b'"by_uuid":{"00000000-0000-0000-0000-000000000002":false},"by_color":{"red":1},'
    b'"by_level":{"1":"low"},"by_day":{"2024-02-29":"leap"},"by_amount":{"1.10":"a"},'
    b'"ids":["00000000-0000-0000-0000-000000000001",'
    b'"00000000-0000-0000-0000-000000000009","00000000-0000-0000-0000-000000000011"],'
    b'"frozen":[-3,1,9,17],"maybe":1180591620717411303424,"either":"s","choice":3,'
    b'"names":["x","y"],"prices":{"p":"0.1"},"anything":{"k":[1,null,2.5,1e-05,"x"],'
    b'"n":{"deep":[true]}},"tree":{"value":1,"children":[{"value":2,"children":[]}]},'
    b'"stamp":"2024-02-29T00:00:00+05:30"}}'
)
GOLDEN_SURROGATE = (
    b'{"id":"01890a5d-ac96-774b-bcce-b302099a8057","name":"test.order","version":1,'
    b'"occurred_at":"2024-05-01T12:30:00+00:00","key":null,'
    b'"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8058","causation_id":null,'
    b'"headers":{},"data":{"order_id":"12345678-1234-5678-1234-567812345678",'
    b'"customer":"a\\ud800b Zo\\u00eb","total":"12.50","quantity":3,"weight":1.5,'
    b'"placed_at":"2024-05-01T12:30:00+02:00","placed_on":"2024-05-01","color":"red",'
    b'"lines":[],"extra":null}}'
)
GOLDEN_PRIVATE = (
    b'{"id":"01890a5d-ac96-774b-bcce-b302099a8057","name":"test.private","version":1,'
    b'"occurred_at":"2024-05-01T12:30:00+00:00","key":null,'
    b'"correlation_id":"01890a5d-ac96-774b-bcce-b302099a8057","causation_id":null,'
    b'"headers":{},"data":{"_secret":"s","name":"bob","note":"none"}}'
)


def golden_envelopes() -> dict[bytes, Envelope]:
    everything = next_everything(
        ratio=1.5e-7,
        coords=(1e22, -0.0),
        at=datetime(2024, 1, 1, 1, 2, 3, 4500, tzinfo=timezone(-timedelta(hours=4, seconds=3593))),
        ids={uuid.UUID(int=n) for n in (17, 9, 1)},
        frozen=frozenset([17, 9, 1, -3]),
        anything={"k": [1, None, 2.5, 1e-05, "x"], "n": {"deep": [True]}},
        maybe=2**70,
        stamp=datetime(2024, 2, 29, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        text="tab\there",
    )
    return {
        GOLDEN_ORDER: envelope_of(
            an_order(customer='Zo\u00eb \u6771\u4eac "q" \\ \n\t\x01\x7f\u2028', weight=1e16),
            id=ID,
            correlation_id=ID,
            key="order-1",
            headers={"traceparent": "00-abc", "\u00e9": "\u00fc"},
            occurred_at=NOON.replace(microsecond=123456),
        ),
        GOLDEN_EVERYTHING: envelope_of(
            everything,
            id=ID,
            correlation_id=OTHER_ID,
            causation_id=THIRD_ID,
            occurred_at=datetime(2024, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=-5))),
        ),
        # A lone surrogate has no UTF-8 form: the whole message is written as ASCII.
        GOLDEN_SURROGATE: envelope_of(
            an_order(customer="a\ud800b Zo\u00eb", lines=[]),
            id=ID,
            correlation_id=OTHER_ID,
            occurred_at=NOON,
        ),
        GOLDEN_PRIVATE: envelope_of(
            WithPrivate(secret="s", name="bob"), id=ID, correlation_id=ID, occurred_at=NOON
        ),
    }


def test_the_wire_format_is_written_byte_for_byte() -> None:
    for golden, envelope in golden_envelopes().items():
        assert CODEC.encode(envelope) == golden


def test_golden_messages_are_read_back_exactly() -> None:
    for golden, envelope in golden_envelopes().items():
        decoded = CODEC.decode(golden)
        assert decoded == envelope
        assert_same(decoded.event, envelope.event)
        assert_same(decoded.occurred_at, envelope.occurred_at)


# --- upcasting and unknown events ----------------------------------------------------------


def upcast_document(version: int, data: dict[str, Any], name: str = "test.upcast") -> bytes:
    document = order_document()
    document.update(name=name, version=version, data=data)
    return dumps(document)


def test_an_old_version_is_upcast_to_the_registered_class() -> None:
    decoded = CODEC.decode(upcast_document(1, {"first": "Ada", "last": "Lovelace", "age": 36}))

    assert decoded.event == Renamed(full_name="Ada Lovelace", age=36)
    assert decoded.version == 2
    assert CODEC.decode_event("test.upcast", 1, {"first": "A", "last": "B", "age": 1}) == Renamed(
        full_name="A B", age=1
    )


def test_the_current_version_is_not_upcast() -> None:
    decoded = CODEC.decode(upcast_document(2, {"full_name": "Ada", "age": 36}))

    assert decoded.event == Renamed(full_name="Ada", age=36)


def test_a_missing_upcaster_is_an_unknown_event_error() -> None:
    with pytest.raises(UnknownEventError, match="no upcaster"):
        CODEC.decode(upcast_document(1, {"x": 1}, name="test.no_upcaster"))


def test_a_newer_version_than_known_is_an_unknown_event_error() -> None:
    with pytest.raises(UnknownEventError, match="newer"):
        CODEC.decode(upcast_document(3, {"full_name": "Ada", "age": 36}))
    with pytest.raises(UnknownEventError, match="newer"):
        CODEC.decode_event("test.upcast", 3, {"full_name": "Ada", "age": 36})


def test_a_failing_upcaster_is_a_decode_error() -> None:
    error = refused(upcast_document(1, {"first": "Ada"}), "upcasting", "version 1", "KeyError")

    assert isinstance(error.__cause__, KeyError)


def test_an_unknown_name_raises_the_registry_error_unwrapped() -> None:
    document = order_document()
    document["name"] = "test.never_declared"

    with pytest.raises(UnknownEventError, match=r"test\.never_declared") as info:
        CODEC.decode(dumps(document))
    assert not isinstance(info.value, SerializationError)
    with pytest.raises(UnknownEventError):
        CODEC.decode_event("test.never_declared", 1, {})


def test_an_unregistered_event_cannot_be_encoded() -> None:
    with pytest.raises(UnknownEventError, match="NotRegistered"):
        CODEC.encode_event(NotRegistered(x=1))
    envelope = Envelope(
        id=uuid7(),
        name="test.order",
        version=1,
        occurred_at=datetime.now(UTC),
        event=NotRegistered(x=1),
        correlation_id=uuid7(),
    )
    with pytest.raises(UnknownEventError):
        CODEC.encode(envelope)


def test_the_default_registry_is_used_when_none_is_given() -> None:
    from eventbus._events import default_registry

    assert JSONCodec().registry is default_registry
    assert JSONCodec(REGISTRY).registry is REGISTRY


# --- refusing bad input --------------------------------------------------------------------


def test_oversized_input_is_refused_before_parsing() -> None:
    codec = JSONCodec(REGISTRY, max_size=100)

    refused(b"x" * 101, "101 bytes", "limit of 100", codec=codec)
    refused("y" * 101, "101", "100", codec=codec)
    refused(memoryview(b"{" * 101), "101 bytes", codec=codec)
    refused(CODEC.encode(envelope_of(an_order())), "max_size", codec=codec)


def test_nesting_deeper_than_max_depth_is_refused() -> None:
    payload: Any = 1
    for _ in range(40):
        payload = [payload]
    document = order_document()
    document.update(name="test.any", data={"payload": payload})

    error = refused(dumps(document), "max_depth=32", "data.payload[0][0]")
    assert "deeper" in str(error)
    shallow = JSONCodec(REGISTRY, max_depth=4)
    tree = Node(1, (Node(2, (Node(3, (Node(4),)),)),))
    raw = CODEC.encode(envelope_of(Deep(tree=tree)))
    refused(raw, "max_depth=4", "data.tree.children", codec=shallow)


def test_pathological_nesting_is_refused_without_a_crash() -> None:
    refused(b"[" * 200_000 + b"]" * 200_000, "nested too deeply")
    refused(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply")


def test_an_integer_longer_than_the_int_string_limit_is_refused() -> None:
    digits = sys.get_int_max_str_digits() + 10
    raw = with_data().replace(b'"quantity":3', b'"quantity":' + b"7" * digits)

    refused(raw, "integer", "digits")


@pytest.mark.parametrize(
    "data", [b"\xff\xfe{}", b'{"id": "\xc3\x28"}', "caf\xe9".encode("latin-1")]
)
def test_invalid_utf8_is_refused(data: bytes) -> None:
    refused(data, "UTF-8")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_payload_is_refused_never_unpickled(protocol: int) -> None:
    payload = pickle.dumps({"id": Booby(), "data": Booby()}, protocol=protocol)

    with pytest.raises(DecodeError):
        CODEC.decode(payload)
    assert UNPICKLED == []
    assert pickle.loads(payload)  # the payload is live: loading it would have recorded
    assert UNPICKLED == ["unpickled", "unpickled"]
    UNPICKLED.clear()


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_refused(literal: bytes) -> None:
    raw = with_data().replace(b'"weight":1.5', b'"weight":' + literal)

    refused(raw, literal.decode().lstrip("-"), "strict JSON")


def test_a_float_literal_out_of_range_is_refused() -> None:
    raw = with_data().replace(b'"weight":1.5', b'"weight":1e999')

    refused(raw, "data.weight", "out of the range")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"[]", ("JSON object", "an array")),
        (b"null", ("JSON object", "null")),
        (b'"text"', ("JSON object", "a string")),
        (b"", ("not valid JSON",)),
        (b"{} trailing", ("not valid JSON",)),
        (b"{'id': 1}", ("not valid JSON",)),
        (b'{"a": 1, "a": 2}', ("'a' twice",)),
        (12, ("expected bytes or str", "int")),
    ],
)
def test_malformed_documents_are_refused(data: Any, words: tuple[str, ...]) -> None:
    refused(data, *words)


def test_missing_envelope_keys_are_refused() -> None:
    document = order_document()
    del document["data"]
    refused(dumps(document), "missing key(s) 'data'")

    del document["id"]
    refused(dumps(document), "missing key(s) 'data', 'id'")


# --- forward compatibility: unknown envelope keys, and the tolerant reader -----------------


def test_an_unknown_envelope_key_is_ignored() -> None:
    # A newer eventbus may add an envelope key: consumers that do not know it read on.
    envelope = envelope_of(an_order(), key="k", headers={"a": "b"})
    document = json.loads(CODEC.encode(envelope))
    document["tenant"] = {"id": 7, "tags": ["x"]}

    assert CODEC.decode(dumps(document)) == envelope
    assert JSONCodec(REGISTRY, tolerant=True).decode(dumps(document)) == envelope


@pytest.mark.parametrize(
    ("raw_value", "words"),
    [
        (b"[" * 40 + b"1" + b"]" * 40, ("tenant[0][0]", "max_depth=32")),
        (b"NaN", ("NaN", "strict JSON")),
        (b'{"a":1,"a":2}', ("'a' twice",)),
    ],
    ids=["too deep", "NaN", "duplicate key"],
)
def test_an_unknown_envelope_key_is_still_held_to_the_limits(
    raw_value: bytes, words: tuple[str, ...]
) -> None:
    raw = CODEC.encode(envelope_of(an_order()))

    refused(raw[:-1] + b',"tenant":' + raw_value + b"}", *words)


@event("test.rolling", registry=REGISTRY)
class Shipped:
    order_id: str
    parcel: Money
    carrier: str | None = None


NEWER = EventRegistry()


@attrs.frozen
class NewerMoney:
    amount: Decimal
    currency: str
    rate: float = 1.0  # added by the newer producer


@event("test.rolling", registry=NEWER)
class NewerShipped:
    order_id: str
    parcel: NewerMoney
    carrier: str | None = None
    tracking: str | None = None  # added by the newer producer, same version


def newer_message(**fields: Any) -> bytes:
    producer = JSONCodec(NEWER)
    shipped = NewerShipped(
        order_id="o-1", parcel=NewerMoney(Decimal("9.50"), "EUR", 1.25), **fields
    )
    info = NEWER.info(NewerShipped)
    return producer.encode(
        Envelope(
            id=uuid7(),
            name=info.name,
            version=info.version,
            occurred_at=datetime.now(UTC),
            event=shipped,
            correlation_id=uuid7(),
        )
    )


def test_an_unknown_event_field_is_refused_naming_the_tolerant_reader() -> None:
    error = refused(
        newer_message(tracking="T-1"),
        "data.parcel.rate",
        "unknown field: Money has no field 'rate'",
        "JSONCodec(tolerant=True)",
    )
    assert "newer producer" in str(error)


def test_a_tolerant_codec_reads_events_of_a_newer_producer() -> None:
    tolerant = JSONCodec(REGISTRY, tolerant=True)

    decoded = tolerant.decode(newer_message(tracking="T-1", carrier="dhl"))

    assert decoded.event == Shipped(
        order_id="o-1", parcel=Money(Decimal("9.50"), "EUR"), carrier="dhl"
    )
    # What it writes again is the event it knows: the unknown fields are not carried on.
    assert "tracking" not in tolerant.encode_event(decoded.event)
    parcel = {"amount": "1", "currency": "EUR", "x": [1]}
    assert tolerant.decode_event("test.rolling", 1, {"order_id": "o", "parcel": parcel}) == (
        Shipped(order_id="o", parcel=Money(Decimal(1), "EUR"))
    )


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"order_id": 5, "tracking": "T"}, ("data.order_id", "expected a JSON string")),
        ({"tracking": "T"}, ("data.order_id", "required field of Shipped is missing")),
        ({"order_id": "o", "tracking": [[[[1]]]]}, ("data.tracking", "max_depth=4")),
        ({"order_id": "o", "tracking": math.nan}, ("data.tracking", "finite")),
    ],
    ids=["mistyped", "missing", "unknown and too deep", "unknown and NaN"],
)
def test_a_tolerant_codec_still_refuses_wrong_and_missing_fields(
    data: dict[str, Any], words: tuple[str, ...]
) -> None:
    tolerant = JSONCodec(REGISTRY, tolerant=True, max_depth=4)
    data = {"parcel": {"amount": "1", "currency": "EUR"}, **data}

    with pytest.raises(DecodeError) as info:
        tolerant.decode_event("test.rolling", 1, data)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_a_tolerant_codec_still_refuses_a_newer_version() -> None:
    tolerant = JSONCodec(REGISTRY, tolerant=True)

    with pytest.raises(UnknownEventError, match="newer"):
        tolerant.decode(upcast_document(3, {"full_name": "Ada", "age": 36, "extra": 1}))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("id", "not-a-uuid", ("id:", "not a valid UUID")),
        ("id", 5, ("id:", "expected a UUID string")),
        ("correlation_id", "", ("correlation_id:", "not a valid UUID")),
        ("causation_id", "zz", ("causation_id:", "not a valid UUID")),
        ("occurred_at", "2024-05-01T12:30:00", ("occurred_at:", "no UTC offset")),
        ("occurred_at", "yesterday", ("occurred_at:", "not an ISO 8601 datetime")),
        ("name", 5, ("name:", "expected a string")),
        ("version", True, ("version:", "integer >= 1")),
        ("version", 0, ("version:", "integer >= 1")),
        ("version", "1", ("version:", "integer >= 1")),
        ("key", 5, ("key:", "expected a string or null")),
        ("key", "", ("key:", "non-empty")),
        ("headers", [], ("headers:", "expected an object")),
        ("headers", {"x": 1}, ("headers['x']", "expected a string")),
        ("headers", {"": "empty name"}, ("headers",)),
        ("data", [], ("data:", "expected a JSON object")),
    ],
)
def test_bad_envelope_fields_are_refused(field: str, value: Any, words: tuple[str, ...]) -> None:
    document = order_document()
    document[field] = value

    refused(dumps(document), *words)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"quantity": "5"}, ("data.quantity", "expected an integer", "'5' (str)")),
        ({"quantity": True}, ("data.quantity", "expected an integer", "True (bool)")),
        ({"quantity": 5.0}, ("data.quantity", "expected an integer", "5.0 (float)")),
        ({"weight": "1.5"}, ("data.weight", "expected a number", "(str)")),
        ({"weight": False}, ("data.weight", "expected a number", "(bool)")),
        ({"customer": 5}, ("data.customer", "expected a JSON string")),
        ({"order_id": "123"}, ("data.order_id", "not a valid UUID")),
        ({"placed_on": "2024-13-45"}, ("data.placed_on", "not an ISO 8601 date")),
        ({"placed_at": "2024-05-01T12:00:00"}, ("data.placed_at", "no UTC offset")),
        ({"total": "1.2.3"}, ("data.total", "not a finite decimal")),
        ({"total": "NaN"}, ("data.total", "not a finite decimal")),
        ({"total": "Infinity"}, ("data.total", "not a finite decimal")),
        ({"total": "-inf"}, ("data.total", "not a finite decimal")),
        ({"total": " 1"}, ("data.total", "not a finite decimal")),
        ({"total": "1" * 101}, ("data.total", "longer than 100")),
        ({"total": 12.5}, ("data.total", "decimal number written as a JSON string")),
        ({"color": "blue"}, ("data.color", "not a value of Color", "'red'")),
        ({"color": None}, ("data.color", "not a value of Color")),
        ({"customer": KeyError}, ("data.customer", "required field", "missing")),
        ({"surprise": 1}, ("data.surprise", "unknown field", "Order has no field")),
        ({"lines": {}}, ("data.lines", "expected a JSON array")),
    ],
)
def test_bad_event_data_is_refused_with_its_path(
    changes: dict[str, Any], words: tuple[str, ...]
) -> None:
    refused(with_data(**changes), "'test.order'", *words)


def test_any_fields_refuse_non_json_values_and_infinity_on_decode() -> None:
    with pytest.raises(DecodeError, match="plain JSON value"):
        CODEC.decode_event("test.any", 1, {"payload": {"a": (1, 2)}})
    document = order_document()
    document.update(name="test.any", data={"payload": [1.0]})

    refused(dumps(document).replace(b"[1.0]", b"[1e999]"), "data.payload[0]", "finite")


def test_paths_reach_into_nested_lists_and_objects() -> None:
    document = order_document()
    document["data"]["lines"][2]["price"]["amount"] = 9.5

    refused(dumps(document), "data.lines[2].price.amount", "decimal")

    document = order_document()
    del document["data"]["lines"][1]["qty"]
    refused(dumps(document), "data.lines[1].qty", "required field of Line is missing")

    document = order_document()
    document["data"]["lines"][0]["price"]["rate"] = 1
    refused(dumps(document), "data.lines[0].price.rate", "unknown field")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("by_int", {"05": "x"}, ("not an integer written in decimal",)),
        ("by_int", {"+5": "x"}, ("not an integer",)),
        ("by_uuid", {"nope": True}, ("not a valid UUID",)),
        ("by_color", {"blue": 1}, ("not a value of Color",)),
        ("by_amount", {"1.0": "a", "1.00": "b"}, ("same value",)),
        ("ids", [str(uuid.UUID(int=1))] * 2, ("duplicate items",)),
        ("coords", [1.0], ("2 items",)),
        ("perm", "rw", ("integer Perm flag",)),
        ("pair", [3, "three"], ("not a value of Pair",)),
        ("choice", "c", ("one of",)),
        ("choice", True, ("one of",)),
        ("level", True, ("not a value of Level",)),
        ("level", 1.0, ("not a value of Level",)),
        ("nothing", 0, ("expected None",)),
        ("either", 1.5, ("matches no member",)),
        ("tree", {"value": 1, "children": [{"value": "x"}]}, ("data.tree.children[0].value",)),
    ],
)
def test_strict_container_enum_and_key_decoding(
    field: str, value: Any, words: tuple[str, ...]
) -> None:
    data = json.loads(json.dumps(CODEC.encode_event(next_everything())))
    data[field] = value

    with pytest.raises(DecodeError) as info:
        CODEC.decode_event("test.everything", 1, data)
    for word in (f"data.{field}", *words):
        assert word in str(info.value), str(info.value)


def test_errors_from_the_event_constructor_become_decode_errors() -> None:
    with pytest.raises(DecodeError, match="Validated refused the data") as info:
        CODEC.decode_event("test.validated", 1, {"qty": 0})

    assert isinstance(info.value.__cause__, ValueError)


# --- refusing to encode --------------------------------------------------------------------


def encode_refused(event_: object, *words: str, codec: JSONCodec = CODEC) -> EncodeError:
    with pytest.raises(EncodeError) as info:
        codec.encode(envelope_of(event_))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return info.value


def test_a_naive_datetime_is_refused_naming_the_field() -> None:
    naive = datetime(2024, 5, 1, 12, 30)  # noqa: DTZ001 - naive on purpose

    encode_refused(an_order(placed_at=naive), "data.placed_at", "naive")
    encode_refused(next_everything(stamp=naive), "data.stamp", "naive")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float) -> None:
    encode_refused(an_order(weight=value), "data.weight", "finite")
    encode_refused(AnyPayload(payload={"x": [value]}), "data.payload['x'][0]", "finite")


def test_non_finite_and_overlong_decimals_are_refused() -> None:
    encode_refused(an_order(total=Decimal("NaN")), "data.total", "finite")
    encode_refused(an_order(total=Decimal("1." + "0" * 120)), "data.total", "quantize")


def test_values_of_the_wrong_type_are_refused() -> None:
    encode_refused(an_order(quantity="3"), "data.quantity", "expected int")
    encode_refused(an_order(quantity=True), "data.quantity", "expected int")
    encode_refused(an_order(color="red"), "data.color", "member of Color")
    encode_refused(an_order(placed_on=datetime.now(UTC)), "data.placed_on", "expected date")
    encode_refused(an_order(lines=(Line("a", 1, Money(Decimal(1), "EUR")),)), "data.lines")
    encode_refused(AnyPayload(payload=(1, 2)), "data.payload", "plain JSON value")
    encode_refused(AnyPayload(payload={1: "a"}), "data.payload", "keys are str")
    not_a_member: Any = b"x"
    encode_refused(UnionEvent(value=not_a_member, number=1), "data.value", "matches no member")


def test_an_unsupported_field_type_names_the_class_field_and_fix() -> None:
    error = encode_refused(
        HasPlain(thing=Plain()), "HasPlain.thing", "unsupported type Plain", "fix"
    )
    assert "attrs class or dataclass" in str(error)

    document = order_document()
    document.update(name="test.unsupported", data={"thing": {}})
    refused(dumps(document), "HasPlain.thing", "unsupported type Plain", "fix")


def test_an_unresolvable_annotation_names_the_field_and_fix() -> None:
    encode_refused(Unresolvable(fine=1, ghost=None), "Unresolvable.ghost", "Missing", "fix")
    with pytest.raises(DecodeError, match=r"Unresolvable\.ghost"):
        CODEC.decode_event("test.unresolvable", 1, {"fine": 1, "ghost": None})


def test_an_oversized_message_is_refused_at_encode_time() -> None:
    codec = JSONCodec(REGISTRY, max_size=200)

    error = encode_refused(an_order(customer="x" * 300), "bytes", "limit of 200", codec=codec)
    assert "max_size" in str(error)


def test_an_integer_too_long_for_json_is_refused_at_encode_time() -> None:
    encode_refused(an_order(quantity=10 ** (sys.get_int_max_str_digits() + 1)), "digits")


def test_self_referencing_any_values_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)

    encode_refused(AnyPayload(payload=loop), "max_depth=32")


def test_an_envelope_whose_name_does_not_match_its_event_is_refused() -> None:
    with pytest.raises(EncodeError, match=r"registered as 'test\.order'"):
        CODEC.encode(envelope_of(an_order(), name="test.other"))


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10", None])
def test_limits_must_be_positive_ints(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_size"):
        JSONCodec(REGISTRY, max_size=value)
    with pytest.raises(ConfigurationError, match="max_depth"):
        JSONCodec(REGISTRY, max_depth=value)


@pytest.mark.parametrize("value", [1, 0, None, "yes"])
def test_tolerant_must_be_a_bool(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="tolerant must be True or False"):
        JSONCodec(REGISTRY, tolerant=value)


def test_the_codec_says_its_settings() -> None:
    codec = JSONCodec(REGISTRY, max_size=10, max_depth=3, tolerant=True)

    assert (codec.max_size, codec.max_depth, codec.tolerant) == (10, 3, True)
    assert repr(codec) == "JSONCodec(max_size=10, max_depth=3, tolerant=True)"
    assert CODEC.tolerant is False


def test_the_registry_must_be_an_event_registry() -> None:
    with pytest.raises(ConfigurationError, match="EventRegistry"):
        JSONCodec({})  # type: ignore[arg-type]


def test_control_characters_in_a_key_or_header_are_not_encoded() -> None:
    with pytest.raises(EncodeError, match="key: key must not contain control characters"):
        CODEC.encode(envelope_of(an_order(), key="order\n1"))
    with pytest.raises(ConfigurationError, match="must not contain control characters"):
        envelope_of(an_order(), headers={"traceparent": "00\r\nX: 1"})


def test_a_key_or_header_with_control_characters_on_the_wire_still_decodes() -> None:
    # Published before keys and headers were checked for control characters: decoded
    # (compact, as msgspec reads it, and with spaces, as json re-reads it), not turned
    # into a dead letter.
    wire = json.loads(CODEC.encode(envelope_of(an_order(), key="k", headers={"h": "v"})))
    wire["key"] = "order\n1"
    wire["headers"] = {"traceparent": "00\r\n1"}
    for raw in (dumps(wire), json.dumps(wire).encode()):
        decoded = CODEC.decode(raw)
        assert decoded.key == "order\n1"
        assert dict(decoded.headers) == {"traceparent": "00\r\n1"}
    # The limits still hold on the wire.
    wire["key"] = "k" * 1025
    with pytest.raises(DecodeError, match="1025 characters"):
        CODEC.decode(dumps(wire))
    wire["key"] = "k"
    wire["headers"] = {f"h{i}": "v" for i in range(65)}
    with pytest.raises(DecodeError, match="at most 64 headers"):
        CODEC.decode(dumps(wire))
