"""The JSON codec: envelopes and events to compact UTF-8 JSON and back, strictly.

Only the standard library's ``json`` parser ever touches bytes from the wire, and only
classes found in the event registry (and the field types they declare) are ever built:
a message cannot name a class into existence. Everything a message could do to hurt a
consumer is refused before or while parsing: oversized input, deep nesting, NaN,
integers too long to convert, duplicate keys, unknown or missing fields.

Each event class is inspected once, on first use: its type hints are turned into a plan
of small encoder/decoder closures per field, cached on the codec, and from the plan one
encoder and one decoder are generated for the class, as attrs generates ``__init__``:
Python source with the field names written in, str/int/bool/None/Decimal fields checked
and converted inline, compiled once. After that a message costs about one call per
class, with no reflection.

Both directions have a fast path for the usual message and a general path for anything
else. ``encode`` writes the JSON text directly (the bytes ``json.dumps`` would write for
the document, exactly) and hands anything unusual to the general path, which builds the
document and raises the documented errors. ``decode`` checks the usual envelope (UUIDs in
their canonical form, say) as strictly as the general path, and hands everything it does
not accept to it, to be judged and named there.

Errors inside a payload carry a path (``data.items[2].price``). The path is built only
when something fails: the happy path pays for a ``try`` block, which is free in 3.11.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import inspect
import json
import keyword
import math
import re
import sys
import types
import typing
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import Any, ClassVar, Literal, NamedTuple, Union

import attrs

from ._envelope import _MAX_KEY_LENGTH, EMPTY_HEADERS, Envelope, check_headers, check_key
from ._events import EventRegistry, EventType, default_registry
from .errors import ConfigurationError, DecodeError, EncodeError, EventBusError

__all__ = ["JSONCodec"]

# A converter takes a value and the nesting budget left, and returns the converted value.
Converter = Callable[[Any, int], Any]

_ENVELOPE_KEYS = frozenset(
    {
        "id",
        "name",
        "version",
        "occurred_at",
        "key",
        "correlation_id",
        "causation_id",
        "headers",
        "data",
    }
)
# Lengths of the longest valid text for each kind of string, with room to spare: longer
# text is refused before it reaches a parser.
_MAX_DECIMAL_LENGTH = 100
_MAX_DATETIME_LENGTH = 64
_MAX_UUID_LENGTH = 64
_MAX_DATE_LENGTH = 32
# Decimal() also accepts "NaN", "Infinity", whitespace, underscores and non-ASCII digits;
# the wire format is a plain JSON-style number written as a string.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# int() accepts "+5", "05", " 5" and "5_0"; a key written by encode is always canonical.
_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_ABSENT = object()
_SUPPORTED = (
    "str, int, float, bool, None, Decimal, an aware datetime, date, UUID, an Enum, "
    "an attrs class or dataclass, list/tuple/set/frozenset/Sequence of those, "
    "dict/Mapping of those, Optional/Union/Literal, or Any"
)


# --- errors inside a value ---------------------------------------------------------------


class _WireError(Exception):
    """A value inside a message is wrong; ``where`` collects its path, innermost first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.where: list[str] = []

    def at(self, segment: str) -> None:
        self.where.append(segment)

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.where))


class _TooDeepError(_WireError):
    """Nesting went past ``max_depth``; the codec adds the limit to the message."""

    def __init__(self) -> None:
        super().__init__("nested deeper than the max_depth limit")


class _PlanError(Exception):
    """A class or a field type cannot be encoded or decoded at all."""


def _show(value: object) -> str:
    """A short description of a value for an error message (never a 1 MB repr)."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _expected(what: str, value: object) -> _WireError:
    return _WireError(f"expected {what}, got {_show(value)}")


def _segment(key: object) -> str:
    text = repr(key)
    return f"[{text[:40]}...]" if len(text) > 40 else f"[{text}]"


def _type_label(tp: object) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


# --- plans ---------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """How to write and read one declared type, and how a union recognises its values.

    ``text`` writes a value straight to its JSON text (what ``_dumps(encode(value))``
    gives, byte for byte), for ``JSONCodec.encode``; None means exactly that, the
    generic way. ``kind`` names a scalar that generated class code checks and converts
    inline (``_INLINE_TEXT``, ``_INLINE_READ``); ``owner`` is the class plan of an attrs
    class or dataclass.
    """

    encode: Converter
    decode: Converter
    match: Callable[[Any], bool]
    label: str
    text: Converter | None = None
    kind: str = ""
    owner: _ClassPlan | None = None


class _KeyPlan(NamedTuple):
    """How to turn a dict key into a JSON object key and back."""

    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


class _Field(NamedTuple):
    name: str  # attribute name, read on encode
    wire: str  # key in the JSON object
    alias: str  # keyword argument of __init__ (attrs drops a leading underscore)
    encode: Converter
    decode: Converter
    required: bool


# --- scalars -------------------------------------------------------------------------------


def _encode_str(value: Any, _depth: int) -> Any:
    if type(value) is str:
        return value
    if isinstance(value, str):  # a str subclass (StrEnum in a str field): write plain text
        return str.__str__(value)
    raise _expected("str", value)


def _decode_str(value: Any, _depth: int) -> Any:
    if type(value) is str:
        return value
    raise _expected("a JSON string", value)


def _encode_int(value: Any, _depth: int) -> Any:
    if type(value) is int:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise _expected("int", value)


def _decode_int(value: Any, _depth: int) -> Any:
    # type() is not isinstance(): a JSON true is a bool, which is an int to Python.
    if type(value) is int:
        return value
    raise _expected("an integer", value)


def _encode_float(value: Any, _depth: int) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        raise _WireError(f"{value!r} is not a finite float: strict JSON has no NaN or Infinity")
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_to_float(value)
    raise _expected("float", value)


def _decode_float(value: Any, _depth: int) -> Any:
    if type(value) is float:
        # json parses 1e999 to inf without complaint.
        if math.isfinite(value):
            return value
        raise _WireError(f"number {value!r} is out of the range of a float")
    if type(value) is int:  # JSON does not distinguish 1 from 1.0; other writers don't either
        return _int_to_float(value)
    raise _expected("a number", value)


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _WireError(f"integer {_show(value)} is too large for a float") from None


def _encode_bool(value: Any, _depth: int) -> Any:
    if type(value) is bool:
        return value
    raise _expected("bool", value)


def _decode_bool(value: Any, _depth: int) -> Any:
    if type(value) is bool:
        return value
    raise _expected("true or false", value)


def _convert_none(value: Any, _depth: int) -> Any:
    if value is None:
        return None
    raise _expected("None", value)


def _encode_decimal(value: Any, _depth: int) -> Any:
    if not isinstance(value, Decimal):
        raise _expected("Decimal", value)
    if not value.is_finite():
        raise _WireError(f"{value!r} is not finite: only finite decimals are written")
    text = str(value)
    if len(text) > _MAX_DECIMAL_LENGTH:
        # Refused here because decode would refuse it: publishers learn at publish time.
        raise _WireError(
            f"Decimal is {len(text)} characters long, over the {_MAX_DECIMAL_LENGTH} that "
            "decoding accepts: quantize() it"
        )
    return text


def _decode_decimal(value: Any, _depth: int) -> Any:
    if type(value) is not str:
        raise _expected("a decimal number written as a JSON string", value)
    if len(value) > _MAX_DECIMAL_LENGTH:
        raise _WireError(f"decimal string is longer than {_MAX_DECIMAL_LENGTH} characters")
    if not _DECIMAL_TEXT.fullmatch(value):
        raise _WireError(f"{_show(value)} is not a finite decimal number")
    return Decimal(value)


def _encode_datetime(value: Any, _depth: int) -> Any:
    if not isinstance(value, datetime):
        raise _expected("an aware datetime", value)
    if value.utcoffset() is None:
        raise _WireError(
            f"naive datetime {value.isoformat()} has no timezone: use an aware datetime, "
            "for example datetime.now(UTC)"
        )
    return value.isoformat()


def _decode_datetime(value: Any, _depth: int) -> Any:
    if type(value) is not str or len(value) > _MAX_DATETIME_LENGTH:
        raise _expected("an ISO 8601 datetime string", value)
    try:
        result = datetime.fromisoformat(value)
    except ValueError:
        raise _WireError(f"{_show(value)} is not an ISO 8601 datetime") from None
    if result.utcoffset() is None:
        raise _WireError(f"datetime {value!r} has no UTC offset: naive datetimes are refused")
    return result


def _is_date(value: object) -> bool:
    # A datetime is a date to isinstance(), but it would not survive date.fromisoformat.
    return isinstance(value, date) and not isinstance(value, datetime)


def _encode_date(value: Any, _depth: int) -> Any:
    if _is_date(value):
        return value.isoformat()
    raise _expected("date", value)


def _decode_date(value: Any, _depth: int) -> Any:
    if type(value) is not str or len(value) > _MAX_DATE_LENGTH:
        raise _expected("an ISO 8601 date string", value)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _WireError(f"{_show(value)} is not an ISO 8601 date") from None


def _encode_uuid(value: Any, _depth: int) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _expected("UUID", value)


def _decode_uuid(value: Any, _depth: int) -> Any:
    if type(value) is not str or len(value) > _MAX_UUID_LENGTH:
        raise _expected("a UUID string", value)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise _WireError(f"{_show(value)} is not a valid UUID") from None


def _always(_value: object) -> bool:
    return True


# --- scalars written straight to JSON text ---------------------------------------------------
#
# Each gives exactly what json writes for the value its encoder returns (the same C string
# escaping, int.__repr__, float.__repr__), or raises; JSONCodec.encode falls back to the
# dict-and-json.dumps path on any exception, which then raises the documented error.


def _text_str(value: Any, depth: int) -> str:
    return _quote(value if type(value) is str else _encode_str(value, depth))


def _text_int(value: Any, depth: int) -> str:
    # ValueError past the int-to-str digit limit, as json.dumps would raise.
    return int.__repr__(value if type(value) is int else _encode_int(value, depth))


def _text_float(value: Any, depth: int) -> str:
    return float.__repr__(_encode_float(value, depth))


def _text_bool(value: Any, _depth: int) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise _expected("bool", value)


def _text_none(value: Any, _depth: int) -> str:
    if value is None:
        return "null"
    raise _expected("None", value)


def _text_decimal(value: Any, depth: int) -> str:
    if type(value) is Decimal and value.is_finite():
        text = str(value)  # digits, '-', '+', '.', 'E': nothing to escape
        if len(text) <= _MAX_DECIMAL_LENGTH:
            return f'"{text}"'
    return _quote(_encode_decimal(value, depth))


def _text_datetime(value: Any, depth: int) -> str:
    return _quote(_encode_datetime(value, depth))


def _text_date(value: Any, depth: int) -> str:
    return _quote(_encode_date(value, depth))


def _uuid_text(value: uuid.UUID) -> str:
    """str(value) for an exact UUID, without the method lookup and the %-formatting."""
    h = value.int.to_bytes(16, "big").hex()  # OverflowError past 128 bits: the general path
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text_uuid(value: Any, depth: int) -> str:
    if type(value) is uuid.UUID:
        return f'"{_uuid_text(value)}"'
    return _quote(_encode_uuid(value, depth))


_SCALARS: dict[object, _Plan] = {
    str: _Plan(_encode_str, _decode_str, lambda v: isinstance(v, str), "str", _text_str, "str"),
    int: _Plan(
        _encode_int,
        _decode_int,
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        "int",
        _text_int,
        "int",
    ),
    float: _Plan(
        _encode_float,
        _decode_float,
        lambda v: isinstance(v, float),
        "float",
        _text_float,
        "float",
    ),
    bool: _Plan(
        _encode_bool, _decode_bool, lambda v: isinstance(v, bool), "bool", _text_bool, "bool"
    ),
    type(None): _Plan(
        _convert_none, _convert_none, lambda v: v is None, "None", _text_none, "none"
    ),
    Decimal: _Plan(
        _encode_decimal,
        _decode_decimal,
        lambda v: isinstance(v, Decimal),
        "Decimal",
        _text_decimal,
        "decimal",
    ),
    datetime: _Plan(
        _encode_datetime,
        _decode_datetime,
        lambda v: isinstance(v, datetime),
        "datetime",
        _text_datetime,
    ),
    date: _Plan(_encode_date, _decode_date, _is_date, "date", _text_date),
    uuid.UUID: _Plan(
        _encode_uuid, _decode_uuid, lambda v: isinstance(v, uuid.UUID), "UUID", _text_uuid
    ),
}


# --- Any: plain JSON values, checked for depth and finiteness ------------------------------


def _plain_json(value: Any, depth: int) -> Any:
    """Check an Any value both ways: plain JSON, finite, within depth; passed on as it is.

    json.loads only ever makes plain JSON, but decode_event also takes dicts from
    elsewhere (an outbox row, a test), and 1e999 parses to inf.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return _encode_float(value, depth)
    if kind is list:
        _walk_list(value, depth, _plain_json)
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise _WireError(f"JSON object keys are str, got key {_show(key)}")
        _walk_dict(value, depth, _plain_json)
        return value
    raise _WireError(
        f"{_show(value)} is not a plain JSON value: an Any field carries str, int, float, "
        "bool, None, and lists and str-keyed dicts of those; annotate the field with "
        "the real type instead"
    )


def _walk_list(items: list[Any], depth: int, check: Converter) -> None:
    if depth <= 0:
        raise _TooDeepError
    for index, item in enumerate(items):
        try:
            check(item, depth - 1)
        except _WireError as exc:
            exc.at(f"[{index}]")
            raise


def _walk_dict(mapping: dict[Any, Any], depth: int, check: Converter) -> None:
    if depth <= 0:
        raise _TooDeepError
    for key, item in mapping.items():
        try:
            check(item, depth - 1)
        except _WireError as exc:
            exc.at(_segment(key))
            raise


_ANY = _Plan(_plain_json, _plain_json, _always, "Any")


# --- containers ----------------------------------------------------------------------------


def _locate(items: Iterable[Any], convert: Converter, depth: int, exc: _WireError) -> None:
    """Add the index of the failing item to ``exc``.

    Containers convert with a comprehension, which cannot say where it stopped; on
    failure (only then) the items are converted again one by one to find the culprit.
    """
    for index, item in enumerate(items):
        try:
            convert(item, depth)
        except _WireError:
            exc.at(f"[{index}]")
            return


def _sequence_plan(item: _Plan, accepts: type | tuple[type, ...], build: type, label: str) -> _Plan:
    """list[X], tuple[X, ...] and Sequence[X]: a JSON array, read back as ``build``."""
    encode_item, decode_item = item.encode, item.decode
    accepted = "a list or a tuple" if isinstance(accepts, tuple) else accepts.__name__

    def match(value: Any) -> bool:
        return isinstance(value, accepts)

    def encode(value: Any, depth: int) -> Any:
        if not match(value):
            raise _expected(accepted, value)
        if depth <= 0:
            raise _TooDeepError
        try:
            return [encode_item(x, depth - 1) for x in value]
        except _WireError as exc:
            _locate(value, encode_item, depth - 1, exc)
            raise

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list:
            raise _expected("a JSON array", value)
        if depth <= 0:
            raise _TooDeepError
        try:
            return build(decode_item(x, depth - 1) for x in value)
        except _WireError as exc:
            _locate(value, decode_item, depth - 1, exc)
            raise

    return _Plan(encode, decode, match, label)


def _fixed_tuple_plan(items: tuple[_Plan, ...], label: str) -> _Plan:
    """tuple[X, Y]: a JSON array of exactly that many items."""
    size = len(items)

    def encode(value: Any, depth: int) -> Any:
        if not isinstance(value, tuple) or len(value) != size:
            raise _expected(f"a tuple of {size} items", value)
        if depth <= 0:
            raise _TooDeepError
        out = []
        for index, (plan, item) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(plan.encode(item, depth - 1))
            except _WireError as exc:
                exc.at(f"[{index}]")
                raise
        return out

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list or len(value) != size:
            raise _expected(f"a JSON array of {size} items", value)
        if depth <= 0:
            raise _TooDeepError
        out = []
        for index, (plan, item) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(plan.decode(item, depth - 1))
            except _WireError as exc:
                exc.at(f"[{index}]")
                raise
        return tuple(out)

    return _Plan(encode, decode, lambda v: isinstance(v, tuple) and len(v) == size, label)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _sorted(items: list[Any]) -> list[Any]:
    """Sort encoded set items so equal sets give equal bytes, whatever the hash seed."""
    try:
        items.sort()
    except TypeError:  # dicts, or a mix of kinds: order by their JSON text instead
        items.sort(key=_canonical)
    return items


def _set_plan(item: _Plan, build: type, label: str) -> _Plan:
    """set[X] and frozenset[X]: a sorted JSON array without duplicates."""
    encode_item, decode_item = item.encode, item.decode

    def encode(value: Any, depth: int) -> Any:
        if not isinstance(value, (set, frozenset)):
            raise _expected("a set or frozenset", value)
        if depth <= 0:
            raise _TooDeepError
        out = []
        for member in value:
            try:
                out.append(encode_item(member, depth - 1))
            except _WireError as exc:
                exc.at(_segment(member))
                raise
        return _sorted(out)

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list:
            raise _expected("a JSON array", value)
        if depth <= 0:
            raise _TooDeepError
        try:
            result = build(decode_item(x, depth - 1) for x in value)
        except _WireError as exc:
            _locate(value, decode_item, depth - 1, exc)
            raise
        except TypeError as exc:  # an unhashable item, e.g. a non-frozen dataclass
            raise _WireError(f"set items must be hashable: {exc}") from exc
        if len(result) != len(value):
            raise _WireError("the array has duplicate items, which a set cannot hold")
        return result

    return _Plan(encode, decode, lambda v: isinstance(v, (set, frozenset)), label)


def _dict_plan(key: _KeyPlan, item: _Plan, accepts: type, label: str) -> _Plan:
    """dict[K, V] and Mapping[K, V]: a JSON object with keys written as strings."""
    encode_key, decode_key = key.encode, key.decode
    encode_item, decode_item = item.encode, item.decode

    def match(value: Any) -> bool:
        return isinstance(value, accepts)

    def encode(value: Any, depth: int) -> Any:
        if not match(value):
            raise _expected(accepts.__name__, value)
        if depth <= 0:
            raise _TooDeepError
        out = {}
        for k, v in value.items():
            try:
                out[encode_key(k)] = encode_item(v, depth - 1)
            except _WireError as exc:
                exc.at(_segment(k))
                raise
        if len(out) != len(value):
            raise _WireError("two keys are written as the same string")
        return out

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not dict:
            raise _expected("a JSON object", value)
        if depth <= 0:
            raise _TooDeepError
        out = {}
        for k, v in value.items():
            try:
                out[decode_key(k)] = decode_item(v, depth - 1)
            except _WireError as exc:
                exc.at(_segment(k))
                raise
        if len(out) != len(value):
            raise _WireError("two keys stand for the same value (e.g. '1.0' and '1.00')")
        return out

    return _Plan(encode, decode, match, label)


# --- dict keys -----------------------------------------------------------------------------


def _str_key(value: Any) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    raise _expected("a str key", value)


def _same_str(value: str) -> str:
    return value


def _int_key(value: Any) -> str:
    return str(_encode_int(value, 0))


def _decode_int_key(value: str) -> int:
    if not _INT_TEXT.fullmatch(value):
        raise _WireError(f"key {_show(value)} is not an integer written in decimal")
    try:
        return int(value)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        raise _WireError("integer key has too many digits") from None


def _wrap_key(encode: Converter, decode: Converter) -> _KeyPlan:
    return _KeyPlan(lambda k: encode(k, 0), lambda k: decode(k, 0))


_KEYS: dict[object, _KeyPlan] = {
    str: _KeyPlan(_str_key, _same_str),
    int: _KeyPlan(_int_key, _decode_int_key),
    uuid.UUID: _wrap_key(_encode_uuid, _decode_uuid),
    date: _wrap_key(_encode_date, _decode_date),
    Decimal: _wrap_key(_encode_decimal, _decode_decimal),
}


# --- enums and literals --------------------------------------------------------------------


def _constant(value: object, owner: str) -> Any:
    """The JSON form of an enum or Literal value, computed once when the plan is built.

    Containers become tuples, which json writes as arrays, so no shared mutable object
    ever leaves the plan.
    """
    if value is None or type(value) in (str, int, bool):
        return value
    if type(value) is float and math.isfinite(value):
        return value
    if isinstance(value, enum.Enum):
        return _constant(value.value, owner)
    if isinstance(value, (list, tuple)):
        return tuple(_constant(item, owner) for item in value)
    for kind in (Decimal, datetime, date, uuid.UUID):
        if isinstance(value, kind):
            try:
                return _SCALARS[kind].encode(value, 0)
            except _WireError as exc:
                raise _PlanError(f"{owner} has a value that cannot be written: {exc}") from None
    raise _PlanError(f"{owner} has the value {_show(value)}, which JSON cannot represent")


def _thaw(value: Any) -> Any:
    return [_thaw(item) for item in value] if type(value) is tuple else value


def _thawed(encode: Converter) -> Converter:
    """Hand out constants stored as tuples as fresh lists: plain JSON values that the
    caller of encode_event may mutate without corrupting the plan."""

    def thawing(value: Any, depth: int) -> Any:
        return _thaw(encode(value, depth))

    return thawing


def _lookup_key(value: Any) -> Any:
    """A hashable key for a JSON value that tells 1, 1.0 and true apart."""
    kind = type(value)
    if kind is list or kind is dict or kind is tuple:
        return ("json", _canonical(value))
    return (kind, value)


def _choices(values: Iterable[Any]) -> str:
    shown = [repr(v) for v in values]
    return ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")


def _value_decoder(
    table: dict[Any, Any], nested: bool, what: str, choices: str
) -> Callable[[Any, int], Any]:
    """Look a JSON value up among the allowed ones; ``nested`` says if any is an array."""

    def decode(value: Any, _depth: int) -> Any:
        kind = type(value)
        if (kind is list or kind is dict) and not nested:
            raise _WireError(f"{_show(value)} is not {what} (one of {choices})")
        try:
            return table[_lookup_key(value)]
        except KeyError:
            raise _WireError(f"{_show(value)} is not {what} (one of {choices})") from None

    return decode


def _enum_plan(cls: type[enum.Enum]) -> _Plan:
    if issubclass(cls, enum.Flag):
        return _flag_plan(cls)
    members = list(cls)
    if not members:
        raise _PlanError(f"enum {cls.__qualname__} has no members")
    to_wire: dict[Any, Any] = {}
    from_wire: dict[Any, Any] = {}
    for member in members:
        encoded = _constant(member.value, f"enum {cls.__qualname__}")
        key = _lookup_key(encoded)
        if key in from_wire:
            raise _PlanError(
                f"enum {cls.__qualname__}: {from_wire[key]} and {member} are written as the "
                "same JSON value"
            )
        to_wire[member] = encoded
        from_wire[key] = member
    label = cls.__qualname__

    def encode(value: Any, _depth: int) -> Any:
        if isinstance(value, cls):
            return to_wire[value]
        raise _expected(f"a member of {label}", value)

    to_text = {member: _dumps(encoded) for member, encoded in to_wire.items()}

    def text(value: Any, _depth: int) -> str:
        if isinstance(value, cls):
            return to_text[value]
        raise _expected(f"a member of {label}", value)

    nested = any(isinstance(v, tuple) for v in to_wire.values())
    choices = _choices(to_wire.values())
    decode = _value_decoder(from_wire, nested, f"a value of {label}", choices)
    return _Plan(
        _thawed(encode) if nested else encode,
        decode,
        lambda v: isinstance(v, cls),
        label,
        text,
    )


def _flag_plan(cls: type[enum.Flag]) -> _Plan:
    """Flags combine: 5 is a valid IntFlag value with no member of its own."""
    if not all(type(member.value) is int for member in cls):
        raise _PlanError(f"flag {cls.__qualname__} must have int values to be written")
    label = cls.__qualname__

    def encode(value: Any, _depth: int) -> Any:
        if isinstance(value, cls):
            return int(value.value)
        raise _expected(f"a {label} flag", value)

    def decode(value: Any, _depth: int) -> Any:
        if type(value) is not int:
            raise _expected(f"an integer {label} flag", value)
        try:
            return cls(value)
        except ValueError:
            raise _WireError(f"{value} is not a valid {label}") from None

    return _Plan(encode, decode, lambda v: isinstance(v, cls), label)


def _literal_plan(tp: object) -> _Plan:
    label = _type_label(tp)
    to_wire: dict[Any, Any] = {}
    from_wire: dict[Any, Any] = {}
    for value in typing.get_args(tp):
        if not (value is None or type(value) in (str, int, bool) or isinstance(value, enum.Enum)):
            raise _PlanError(f"{label}: Literal values must be str, int, bool, None or Enum")
        encoded = _constant(value, label)
        to_wire[(type(value), value)] = encoded
        from_wire[_lookup_key(encoded)] = value
    choices = _choices(typing.get_args(tp))

    def encode(value: Any, _depth: int) -> Any:
        try:
            return to_wire[(type(value), value)]
        except (KeyError, TypeError):  # TypeError: an unhashable value
            raise _WireError(f"{_show(value)} is not one of {choices}") from None

    def match(value: Any) -> bool:
        try:
            return (type(value), value) in to_wire
        except TypeError:
            return False

    nested = any(isinstance(v, tuple) for v in to_wire.values())
    decode = _value_decoder(from_wire, nested, "allowed", choices)
    return _Plan(_thawed(encode) if nested else encode, decode, match, label)


def _enum_key(cls: type[enum.Enum]) -> _KeyPlan:
    to_key: dict[Any, str] = {}
    from_key: dict[str, Any] = {}
    for member in cls:
        encoded = _constant(member.value, f"enum {cls.__qualname__}")
        if type(encoded) not in (str, int):
            raise _PlanError(
                f"enum {cls.__qualname__} is used as a dict key, so its values must be str or int"
            )
        to_key[member] = str(encoded)
        from_key[str(encoded)] = member
    label = cls.__qualname__
    choices = _choices(from_key)

    def encode(value: Any) -> str:
        if isinstance(value, cls) and value in to_key:
            return to_key[value]
        raise _expected(f"a {label} key", value)

    def decode(value: str) -> Any:
        try:
            return from_key[value]
        except KeyError:
            raise _WireError(f"key {value!r} is not a value of {label} ({choices})") from None

    return _KeyPlan(encode, decode)


# --- unions --------------------------------------------------------------------------------


def _optional_plan(inner: _Plan) -> _Plan:
    """X | None, the common union, without the general union's trial and error."""
    encode_inner, decode_inner, match_inner = inner.encode, inner.decode, inner.match

    text_inner = _text_of(inner)

    def encode(value: Any, depth: int) -> Any:
        return None if value is None else encode_inner(value, depth)

    def decode(value: Any, depth: int) -> Any:
        return None if value is None else decode_inner(value, depth)

    def text(value: Any, depth: int) -> str:
        return "null" if value is None else text_inner(value, depth)

    return _Plan(
        encode, decode, lambda v: v is None or match_inner(v), f"{inner.label} | None", text
    )


def _union_plan(members: tuple[_Plan, ...]) -> _Plan:
    """Encode with the first member the value is an instance of; decode with the first
    member, in declared order, that accepts the JSON value."""
    label = " | ".join(member.label for member in members)

    def encode(value: Any, depth: int) -> Any:
        problems: list[str] = []
        # isinstance first; then any member whose encoder takes the value (an int for float).
        ordered = [m for m in members if m.match(value)]
        ordered += [m for m in members if m not in ordered]
        for member in ordered:
            try:
                return member.encode(value, depth)
            except _TooDeepError:
                raise
            except _WireError as exc:
                problems.append(f"{member.label}: {exc.message}")
        raise _WireError(f"{_show(value)} matches no member of {label} ({'; '.join(problems)})")

    def decode(value: Any, depth: int) -> Any:
        problems: list[str] = []
        for member in members:
            try:
                return member.decode(value, depth)
            except _TooDeepError:
                raise
            except _WireError as exc:
                problems.append(f"{member.label}: {exc.path('')}{exc.message}")
        raise _WireError(f"{_show(value)} matches no member of {label} ({'; '.join(problems)})")

    return _Plan(encode, decode, lambda v: any(m.match(v) for m in members), label)


# --- classes -------------------------------------------------------------------------------


class _ClassPlan:
    """The encoder and decoder of one attrs class or dataclass.

    Created empty and filled in once its fields are compiled, so a class can refer to
    itself (``children: list[Node]``) through the same plan object.
    """

    __slots__ = ("cls", "fast_decode", "fast_text", "fields", "label", "plans", "wire_names")

    def __init__(self, cls: type[Any]) -> None:
        self.cls = cls
        self.label = cls.__qualname__
        self.fields: tuple[_Field, ...] = ()
        self.plans: tuple[_Plan, ...] = ()  # the plan of each field, in the same order
        self.wire_names: frozenset[str] = frozenset()
        # Replaced by code generated for the class once its fields are known (finish).
        self.fast_text: Converter = self.text_generic
        self.fast_decode: Converter = self.decode_slow

    def finish(self, fields: tuple[_Field, ...], plans: tuple[_Plan, ...]) -> None:
        """Set the fields and generate the fast encoder and decoder for them."""
        self.fields = fields
        self.plans = plans
        self.wire_names = frozenset(field.wire for field in fields)
        generated = _generate(self)
        if generated is not None:
            self.fast_text, self.fast_decode = generated

    def text(self, value: Any, depth: int) -> str:
        """The value as JSON text: what ``_dumps(self.encode(value, depth))`` gives."""
        return self.fast_text(value, depth)  # type: ignore[no-any-return]

    def text_generic(self, value: Any, depth: int) -> str:
        return _dumps(self.encode(value, depth))

    def decode(self, value: Any, depth: int) -> Any:
        return self.fast_decode(value, depth)

    def encode(self, value: Any, depth: int) -> dict[str, Any]:
        if type(value) is not self.cls:
            raise _expected(self.label, value)
        if depth <= 0:
            raise _TooDeepError
        depth -= 1
        out: dict[str, Any] = {}
        # Tuple unpacking, not NamedTuple attributes: this loop is the hot path.
        for name, wire, _, encode, _, _ in self.fields:
            try:
                out[wire] = encode(getattr(value, name), depth)
            except _WireError as exc:
                exc.at(f".{wire}")
                raise
        return out

    def decode_slow(self, value: Any, depth: int) -> Any:
        """The general decoder: the generated one hands over whatever it does not expect
        (absent or unknown fields, values of another JSON type), and this one raises."""
        if type(value) is not dict:
            raise _expected(f"a JSON object for {self.label}", value)
        if depth <= 0:
            raise _TooDeepError
        depth -= 1
        kwargs: dict[str, Any] = {}
        for _, wire, alias, _, decode, required in self.fields:
            raw = value.get(wire, _ABSENT)
            if raw is _ABSENT:
                if required:
                    raise self._missing(wire)
                continue  # the class default applies
            try:
                kwargs[alias] = decode(raw, depth)
            except _WireError as exc:
                exc.at(f".{wire}")
                raise
        if len(kwargs) != len(value):
            raise self._unknown_field(value)
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:
            # The class's own validators and converters have the last word on the data.
            raise _WireError(f"{self.label} refused the data: {exc}") from exc

    def _missing(self, wire: str) -> _WireError:
        exc = _WireError(f"required field of {self.label} is missing")
        exc.at(f".{wire}")
        return exc

    def _unknown_field(self, value: dict[str, Any]) -> _WireError:
        unknown = sorted(key for key in value if key not in self.wire_names)
        exc = _WireError(
            f"unknown field: {self.label} has no field {unknown[0]!r} "
            f"(its fields: {', '.join(sorted(self.wire_names)) or 'none'})"
        )
        exc.at(_segment(unknown[0]) if not unknown[0].isidentifier() else f".{unknown[0]}")
        return exc

    def as_plan(self) -> _Plan:
        cls = self.cls
        return _Plan(
            self.encode, self.decode, lambda v: type(v) is cls, self.label, self.text, "", self
        )


# --- generated class code --------------------------------------------------------------------
#
# Like attrs, the codec writes Python source per class and compiles it once: field reads by
# attribute name, one f-string for the whole object, and scalars checked and converted
# inline, with no call per field. The generated code does exactly what the general code
# does; whatever it does not expect, it hands to the general code (decode_slow on decode, the
# dict-and-json.dumps path on encode), so the errors stay exactly the documented ones.

# Scalars written inline by generated encoders. kind: (the check that the value is the
# usual type, its replacement field in the f-string). An exact int formats as its repr; the
# walrus keeps the text of a Decimal whose length the check has measured.
_INLINE_TEXT: dict[str, tuple[str, str]] = {
    "str": ("type({v}) is str", "{{_quote({v})}}"),
    "int": ("type({v}) is int", "{{{v}}}"),
    "bool": ("({v} is True or {v} is False)", '{{"true" if {v} else "false"}}'),
    "none": ("{v} is None", "null"),
    "float": ("(type({v}) is float and _isfinite({v}))", "{{{v}!r}}"),
    "decimal": (
        (
            f"(type({{v}}) is Decimal and {{v}}.is_finite()"
            f" and len(s{{v}} := str({{v}})) <= {_MAX_DECIMAL_LENGTH})"
        ),
        '"{{s{v}}}"',
    ),
}
# Scalars read inline by generated decoders. kind: (the check that the JSON value is
# exactly what the scalar's decoder accepts, the value it then returns). An int read for a
# float field stays a call.
_INLINE_READ: dict[str, tuple[str, str]] = {
    "str": ("type({v}) is str", "{v}"),
    "int": ("type({v}) is int", "{v}"),
    "bool": ("type({v}) is bool", "{v}"),
    "none": ("{v} is None", "{v}"),
    "decimal": (
        f"type({{v}}) is str and len({{v}}) <= {_MAX_DECIMAL_LENGTH} and _decimal_text({{v}})",
        "_Decimal({v})",
    ),
}


def _safe_name(name: str) -> bool:
    """Whether ``name`` reads as itself in source: Python NFKC-normalises identifiers."""
    return (
        name.isidentifier()
        and not keyword.iskeyword(name)
        and unicodedata.normalize("NFKC", name) == name
    )


def _generate(plan: _ClassPlan) -> tuple[Converter, Converter] | None:
    """Compile the fast text encoder and decoder of a class plan (None: keep the general
    ones, for field names that cannot be written into Python source as they are)."""
    for field in plan.fields:
        if not (_safe_name(field.name) and _safe_name(field.alias)):
            return None
    namespace: dict[str, Any] = {
        "cls": plan.cls,
        "label": plan.label,
        "slow": plan.decode_slow,
        "_quote": _quote,
        "_isfinite": math.isfinite,
        "_decimal_text": _DECIMAL_TEXT.fullmatch,
        "_Decimal": Decimal,
        "Decimal": Decimal,
        "_expected": _expected,
        "_TooDeepError": _TooDeepError,
        "_WireError": _WireError,
    }
    source = _text_source(plan, namespace) + "\n" + _decode_source(plan, namespace)
    code = compile(source, f"<eventbus codec for {plan.cls.__module__}.{plan.label}>", "exec")
    exec(code, namespace)  # noqa: S102 - built from field names checked to be identifiers
    return namespace["text"], namespace["decode"]


def _text_source(plan: _ClassPlan, namespace: dict[str, Any]) -> str:
    """``text(value, depth)``: the object as one f-string, '{"a":' + the JSON of field a +
    ',"b":' ... + '}'; scalars of their usual type inline, anything else through the
    field's text writer. Wire names are identifiers: their JSON text needs no escaping in
    an f-string (no quote, backslash or brace)."""
    reads, checks, fast, general = [], [], [], []
    for index, (field, field_plan) in enumerate(zip(plan.fields, plan.plans, strict=True)):
        v = f"v{index}"
        key = ("{{" if index == 0 else ",") + _quote(field.wire) + ":"
        reads.append(f"    {v} = value.{field.name}")
        if field_plan.owner is not None:
            namespace[f"P{index}"] = field_plan.owner
            call = f"{{P{index}.fast_text({v}, depth)}}"
        else:
            namespace[f"t{index}"] = _text_of(field_plan)
            call = f"{{t{index}({v}, depth)}}"
        general.append(key + call)
        inline = _INLINE_TEXT.get(field_plan.kind)
        if inline is None:
            fast.append(key + call)
        else:
            checks.append(inline[0].format(v=v))
            fast.append(key + inline[1].format(v=v))
    lines = [
        "def text(value, depth):",
        "    if type(value) is not cls:",
        "        raise _expected(label, value)",
        "    if depth <= 0:",
        "        raise _TooDeepError",
        "    depth -= 1",
        *reads,
    ]
    if checks:
        lines.append(f"    if {' and '.join(checks)}:")
        lines.append("        return f'" + "".join(fast) + "}}'")
    lines.append("    return f'" + "".join(general) + "}}'" if general else "    return '{}'")
    return "\n".join(lines) + "\n"


def _decode_source(plan: _ClassPlan, namespace: dict[str, Any]) -> str:
    """``decode(value, depth)``: for an object with exactly the class's fields, read each
    by key, check and pass scalars inline, convert the rest through their decoders, then
    call the class. Anything else (absent, unknown or mistyped fields) goes to ``slow``,
    the general decoder, which says what is wrong."""
    fields = plan.fields
    lines = [
        "def decode(value, depth):",
        f"    if type(value) is not dict or len(value) != {len(fields)} or depth <= 0:",
        "        return slow(value, depth)",
    ]
    if fields:
        lines.append("    try:")
        lines += [f"        v{index} = value[{field.wire!r}]" for index, field in enumerate(fields)]
        lines += ["    except KeyError:", "        return slow(value, depth)"]
    checks, converted, arguments = [], [], []
    for index, (field, field_plan) in enumerate(zip(fields, plan.plans, strict=True)):
        v = f"v{index}"
        read = _INLINE_READ.get(field_plan.kind)
        if read is not None:
            checks.append(read[0].format(v=v))
            if read[1] == "{v}":
                arguments.append(f"{field.alias}={v}")
            else:  # before the constructor's try: a failure here is not the class's
                converted.append(f"    a{index} = {read[1].format(v=v)}")
                arguments.append(f"{field.alias}=a{index}")
            continue
        if field_plan.owner is not None:
            namespace[f"P{index}"] = field_plan.owner
            call = f"P{index}.fast_decode({v}, depth - 1)"
        else:
            namespace[f"d{index}"] = field_plan.decode
            call = f"d{index}({v}, depth - 1)"
        # In field order, as the general decoder reads them: the same first error.
        converted += [
            "    try:",
            f"        a{index} = {call}",
            "    except _WireError as exc:",
            f"        exc.at({'.' + field.wire!r})",
            "        raise",
        ]
        arguments.append(f"{field.alias}=a{index}")
    if checks:
        lines.append(f"    if not ({' and '.join(checks)}):")
        lines.append("        return slow(value, depth)")
    lines += converted
    lines += [
        "    try:",
        f"        return cls({', '.join(arguments)})",
        "    except (TypeError, ValueError) as exc:",
        "        # The class's own validators and converters have the last word on the data.",
        '        raise _WireError(f"{label} refused the data: {exc}") from exc',
    ]
    return "\n".join(lines) + "\n"


def _text_of(plan: _Plan) -> Converter:
    """A plan's text writer; the generic one is json.dumps of what its encoder returns."""
    if plan.text is not None:
        return plan.text
    encode = plan.encode

    def text(value: Any, depth: int) -> str:
        return _dumps(encode(value, depth))

    return text


class _FieldSpec(NamedTuple):
    name: str
    alias: str
    annotation: object
    required: bool


def _field_specs(cls: type[Any]) -> list[_FieldSpec]:
    """The fields ``__init__`` takes; ``init=False`` fields are derived, not sent."""
    if attrs.has(cls):
        return [
            _FieldSpec(a.name, a.alias or a.name, a.type, a.default is attrs.NOTHING)
            for a in attrs.fields(cls)
            if a.init
        ]
    if dataclasses.is_dataclass(cls):
        return [
            _FieldSpec(
                f.name,
                f.name,
                f.type,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
            if f.init
        ]
    raise _PlanError(f"{cls.__qualname__} is neither an attrs class nor a dataclass")


def _resolve_hints(cls: type[Any], specs: list[_FieldSpec]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        names = _unresolvable(cls, {spec.name for spec in specs})
        where = f"{cls.__qualname__}.{names[0]}" if names else cls.__qualname__
        raise _PlanError(
            f"the annotation of {where} cannot be resolved ({type(exc).__name__}: {exc}); "
            "fix: define or import every name used in annotations at module level, not "
            "only under `if TYPE_CHECKING:` or inside a function"
        ) from None


def _unresolvable(cls: type[Any], names: set[str]) -> list[str]:
    """Which fields' annotations fail to resolve (get_type_hints only says that one did)."""
    bad: list[str] = []
    for base in reversed(cls.__mro__):
        module = sys.modules.get(base.__module__)
        module_names = dict(vars(module)) if module is not None else {}
        for name, annotation in inspect.get_annotations(base).items():
            if name not in names:
                continue
            probe = types.SimpleNamespace(__annotations__={name: annotation})
            try:
                typing.get_type_hints(probe, globalns=module_names, localns=dict(vars(base)))
            except Exception:  # any failure is the answer we are looking for
                bad.append(name)
    return bad


class _Compiler:
    """Builds plans for a class and everything it contains, all or nothing."""

    def __init__(self, done: dict[type[Any], _ClassPlan]) -> None:
        self.done = done
        self.pending: dict[type[Any], _ClassPlan] = {}

    def class_plan(self, cls: type[Any]) -> _ClassPlan:
        known = self.done.get(cls) or self.pending.get(cls)
        if known is not None:
            return known
        plan = _ClassPlan(cls)
        self.pending[cls] = plan  # before the fields: a field may refer back to cls
        specs = _field_specs(cls)
        hints = _resolve_hints(cls, specs)
        compiled = [self._field(cls, spec, hints) for spec in specs]
        plan.finish(
            tuple(field for field, _ in compiled), tuple(field_plan for _, field_plan in compiled)
        )
        return plan

    def _field(
        self, cls: type[Any], spec: _FieldSpec, hints: dict[str, Any]
    ) -> tuple[_Field, _Plan]:
        annotation = hints.get(spec.name, spec.annotation)
        where = f"{cls.__qualname__}.{spec.name}"
        if annotation is None or isinstance(annotation, str):
            raise _PlanError(f"{where} has no resolvable type annotation; fix: annotate it")
        try:
            plan = self.compile(annotation)
        except _PlanError as exc:
            raise _PlanError(f"{where}: {exc}") from None
        field = _Field(spec.name, spec.name, spec.alias, plan.encode, plan.decode, spec.required)
        return field, plan

    def compile(self, tp: Any) -> _Plan:
        try:
            scalar = _SCALARS.get(tp)
        except TypeError:  # an unhashable annotation such as [int]: not a type at all
            raise _PlanError(f"{tp!r} is not a type; fix: use {_SUPPORTED}") from None
        if scalar is not None:
            return scalar
        if tp is Any:
            return _ANY
        origin = typing.get_origin(tp)
        if origin is not None:
            return self._generic(tp, origin, typing.get_args(tp))
        if tp in _BARE:  # list, dict, ... without parameters hold Any
            return self.compile(_BARE[tp])
        if isinstance(tp, typing.NewType):
            return self.compile(tp.__supertype__)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum_plan(tp)
        if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
            return self.class_plan(tp).as_plan()
        raise _PlanError(f"unsupported type {_type_label(tp)}; fix: use {_SUPPORTED}")

    def _generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> _Plan:
        label = _type_label(tp)
        if origin is Union or origin is types.UnionType:
            return self._union(args)
        if origin is Literal:
            return _literal_plan(tp)
        if origin is typing.Annotated:
            return self.compile(args[0])
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return _sequence_plan(self.compile(args[0]), tuple, tuple, label)
            return _fixed_tuple_plan(tuple(self.compile(arg) for arg in args), label)
        if origin in (dict, cabc.MutableMapping, cabc.Mapping):
            key = self.key(args[0]) if args else _KEYS[str]
            value = self.compile(args[1]) if args else _ANY
            accepts = cabc.Mapping if origin is cabc.Mapping else dict
            return _dict_plan(key, value, accepts, label)
        if origin not in _COLLECTIONS:
            raise _PlanError(f"unsupported type {label}; fix: use {_SUPPORTED}")
        item = self.compile(args[0]) if args else _ANY
        if origin in (list, cabc.MutableSequence):
            return _sequence_plan(item, list, list, label)
        if origin is cabc.Sequence:
            return _sequence_plan(item, (list, tuple), tuple, label)
        if origin in (set, cabc.MutableSet):
            return _set_plan(item, set, label)
        return _set_plan(item, frozenset, label)

    def _union(self, args: tuple[Any, ...]) -> _Plan:
        none = type(None)
        if len(args) == 2 and none in args:
            return _optional_plan(self.compile(args[0] if args[1] is none else args[1]))
        return _union_plan(tuple(self.compile(arg) for arg in args))

    def key(self, tp: Any) -> _KeyPlan:
        if isinstance(tp, typing.NewType):
            return self.key(tp.__supertype__)
        plan = _KEYS.get(tp)
        if plan is not None:
            return plan
        if isinstance(tp, type) and issubclass(tp, enum.Enum) and not issubclass(tp, enum.Flag):
            return _enum_key(tp)
        raise _PlanError(
            f"unsupported dict key type {_type_label(tp)}; fix: use str, int, UUID, date, "
            "Decimal or an Enum with str or int values as keys"
        )


_COLLECTIONS = frozenset(
    {list, cabc.MutableSequence, cabc.Sequence, set, cabc.MutableSet, frozenset, cabc.Set}
)
_BARE: dict[object, object] = {
    list: list[Any],
    tuple: tuple[Any, ...],
    set: set[Any],
    frozenset: frozenset[Any],
    dict: dict[str, Any],
}


# --- the parser ----------------------------------------------------------------------------


class _NonFiniteError(ValueError):
    pass


class _DuplicateKeyError(ValueError):
    pass


def _refuse_constant(literal: str) -> Any:
    raise _NonFiniteError(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; another reader may keep the first. Refusing
    # duplicates means every reader sees the same message.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
_loads = _decoder.decode
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]
_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode
# Lone surrogates (from "\ud800" in a received message) have no UTF-8 form: escape them.
_dumps_ascii = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, check_circular=False, separators=(",", ":")
).encode


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _positive(value: object, name: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


# --- the codec -----------------------------------------------------------------------------


class JSONCodec:
    """Envelopes to compact UTF-8 JSON and back.

    ``max_size`` bounds a message in bytes (both ways: an event too large to be read is
    refused when it is published) and ``max_depth`` bounds the nesting of JSON arrays and
    objects, the envelope itself counting as one level.
    """

    content_type: ClassVar[str] = "application/json"

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        max_size: int = 1_048_576,
        max_depth: int = 32,
    ) -> None:
        if registry is not None and not isinstance(registry, EventRegistry):
            raise ConfigurationError(f"registry must be an EventRegistry, got {registry!r}")
        self._registry = default_registry if registry is None else registry
        self._max_size = _positive(max_size, "max_size")
        self._max_depth = _positive(max_depth, "max_depth")
        self._plans: dict[type[Any], _ClassPlan] = {}
        # The name and version of each event class as encode writes them, with the
        # registration they were read from (re-registering replaces it).
        self._heads: dict[type[Any], tuple[EventType, str]] = {}

    @property
    def registry(self) -> EventRegistry:
        return self._registry

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def __repr__(self) -> str:
        return f"JSONCodec(max_size={self._max_size}, max_depth={self._max_depth})"

    # -- encoding --

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope as compact UTF-8 JSON; EncodeError if it cannot be written."""
        if type(envelope) is Envelope:
            try:
                raw = self._encode_text(envelope).encode()  # UTF-8, strict
            except Exception:  # noqa: S110 - the general path raises the real error
                pass
            else:
                if len(raw) <= self._max_size:
                    return raw
        return self._encode_general(envelope)

    def _encode_text(self, envelope: Envelope) -> str:
        """The fast path of encode: the JSON text written directly, byte for byte what
        ``_encode_general`` writes. It raises on anything unusual (wrong types, a
        subclass, a lone surrogate, a failing field) and encode then takes the general
        path, which raises the documented EncodeError, or writes what this could not."""
        event = envelope.event
        info = self._registry.info(type(event))
        if envelope.name != info.name or envelope.version != info.version:
            raise _Unusual
        plan = self._plans.get(info.cls) or self._compile(info.cls, EncodeError)
        data = plan.fast_text(event, self._max_depth - 1)
        ident = envelope.id
        if type(ident) is not uuid.UUID:
            raise _Unusual
        ident_text = _uuid_text(ident)
        correlation = envelope.correlation_id
        if correlation is ident:  # a root publication: its own correlation id
            correlation_text = ident_text
        elif type(correlation) is uuid.UUID:
            correlation_text = _uuid_text(correlation)
        else:
            raise _Unusual
        causation = envelope.causation_id
        if causation is None:
            causation_text = "null"
        elif type(causation) is uuid.UUID:
            causation_text = f'"{_uuid_text(causation)}"'
        else:
            raise _Unusual
        head = self._heads.get(info.cls)
        if head is None or head[0] is not info:
            text = f'","name":{_quote(info.name)},"version":{int.__repr__(info.version)},'
            head = self._heads[info.cls] = (info, text + '"occurred_at":"')
        key = envelope.key
        if key is None:
            key_text = "null"
        elif type(key) is str and 0 < len(key) <= _MAX_KEY_LENGTH:  # check_key's test
            key_text = _quote(key)
        else:
            raise _Unusual
        headers = envelope.headers
        # The document _encode_general builds, in its order, as _serialize writes it.
        return "".join(
            (
                '{"id":"',
                ident_text,
                head[1],
                _time_text(envelope.occurred_at),
                '","key":',
                key_text,
                ',"correlation_id":"',
                correlation_text,
                '","causation_id":',
                causation_text,
                ',"headers":',
                "{}" if headers is EMPTY_HEADERS else _dumps(dict(headers)),
                ',"data":',
                data,
                "}",
            )
        )

    def _encode_general(self, envelope: Envelope) -> bytes:
        if not isinstance(envelope, Envelope):
            raise EncodeError(f"expected an Envelope, got {_show(envelope)}")
        info = self._registry.info(type(envelope.event))
        if envelope.name != info.name or envelope.version != info.version:
            raise EncodeError(
                f"the envelope says {envelope.name!r} version {envelope.version}, but its "
                f"event is a {info.cls.__qualname__}, registered as {info.name!r} version "
                f"{info.version}"
            )
        causation = envelope.causation_id
        document = {
            "id": _envelope_uuid(envelope.id, "id"),
            "name": info.name,
            "version": info.version,
            "occurred_at": _envelope_time(envelope.occurred_at),
            "key": _envelope_key(envelope.key),
            "correlation_id": _envelope_uuid(envelope.correlation_id, "correlation_id"),
            "causation_id": None
            if causation is None
            else _envelope_uuid(causation, "causation_id"),
            "headers": dict(envelope.headers),
            "data": self._encode_data(info, envelope.event),
        }
        raw = _serialize(document)
        if len(raw) > self._max_size:
            raise EncodeError(
                f"the encoded {info.name!r} message is {len(raw)} bytes, over the limit of "
                f"{self._max_size} bytes (max_size): send less data, or a reference to it"
            )
        return raw

    def encode_event(self, event: object) -> dict[str, Any]:
        """The payload of ``event`` as a JSON-ready dict (without the envelope)."""
        info = self._registry.info(type(event))
        return self._encode_data(info, event)

    def _encode_data(self, info: EventType, event: object) -> dict[str, Any]:
        plan = self._plans.get(info.cls) or self._compile(info.cls, EncodeError)
        try:
            return plan.encode(event, self._max_depth - 1)
        except _WireError as exc:
            raise EncodeError(
                f"cannot encode {info.name!r} ({info.cls.__qualname__}): "
                f"{exc.path('data')}: {self._message(exc)}"
            ) from exc.__cause__
        except RecursionError:
            raise EncodeError(
                f"cannot encode {info.name!r}: the event is nested too deeply (or refers to itself)"
            ) from None

    # -- decoding --

    def decode(self, data: bytes | bytearray | memoryview | str) -> Envelope:
        """Parse and validate one envelope; DecodeError for anything malformed.

        UnknownEventError (from the registry) for a well-formed message whose event
        name, or version, this process does not know.
        """
        document: Any = _ABSENT
        if type(data) is bytes and len(data) <= self._max_size:
            # The usual message, bytes as encode wrote them: what _parse does, minus its
            # checks for the other kinds of input and JSONDecoder.decode's whitespace
            # searches. Anything else (an error of any kind too) goes to _parse, which
            # does it all again and raises the documented error.
            try:
                text = data.decode()
                document, end = _scan(text, 0)
            except Exception:  # _parse raises it again, with its message
                document = _ABSENT
            else:
                if end != len(text):
                    document = _ABSENT
        if document is _ABSENT:
            document = self._parse(data)
        if type(document) is dict and len(document) == len(_ENVELOPE_KEYS):
            envelope = self._decode_fast(document)
            if envelope is not None:
                return envelope
        return self._decode_general(document)

    def _decode_fast(self, document: dict[str, Any]) -> Envelope | None:
        """The fast path of decode, for a well-formed envelope. It checks every envelope
        field as strictly as the general path, with cheaper tests for the usual forms
        (a UUID in its canonical text, say), and returns None for anything it does not
        accept, for the general path to judge and name in its error. The event itself
        is decoded the same way on both paths, with the same errors."""
        try:
            name = document["name"]
            version = document["version"]
            ident = document["id"]
            occurred = document["occurred_at"]
            key = document["key"]
            correlation = document["correlation_id"]
            causation = document["causation_id"]
            headers = document["headers"]
            data = document["data"]
        except KeyError:
            return None
        if type(name) is not str or type(version) is not int or version < 1:
            return None
        if type(ident) is not str or not _UUID_TEXT.fullmatch(ident):
            return None
        envelope_id: uuid.UUID = _new_uuid(uuid.UUID)  # as _uuid_of, without the call
        _set_uuid_int(envelope_id, int(ident.replace("-", ""), 16))
        _set_uuid_safe(envelope_id, _SAFE_UNKNOWN)
        if correlation == ident:  # a root publication: its own correlation id
            correlation_id = envelope_id
        elif type(correlation) is str and _UUID_TEXT.fullmatch(correlation):
            correlation_id = _uuid_of(int(correlation.replace("-", ""), 16))
        else:
            return None
        causation_id: uuid.UUID | None = None
        if causation is not None:
            if type(causation) is not str or not _UUID_TEXT.fullmatch(causation):
                return None
            causation_id = _uuid_of(int(causation.replace("-", ""), 16))
        if type(occurred) is not str or len(occurred) > _MAX_DATETIME_LENGTH:
            return None
        try:
            occurred_at = datetime.fromisoformat(occurred)
        except ValueError:
            return None
        if occurred_at.tzinfo is None:  # else a datetime.timezone: utcoffset() is not None
            return None
        if type(headers) is not dict:
            return None
        try:
            if key is not None:
                check_key(key)
            checked_headers = check_headers(headers) if headers else EMPTY_HEADERS
        except ConfigurationError:
            return None
        info = self._registry.by_name(name)
        event = self._decode_data(info, version, data, self._max_depth - 1)
        # Every field is checked above as Envelope's converter and validator would.
        return _trusted_envelope(
            envelope_id,
            info.name,
            info.version,  # the registered version, not the wire one: the event was upcast
            occurred_at,
            event,
            key,
            correlation_id,
            causation_id,
            checked_headers,
        )

    def _decode_general(self, document: Any) -> Envelope:
        if type(document) is not dict:
            raise DecodeError(
                f"an envelope is a JSON object, got {_json_kind(document)} at the top level"
            )
        if document.keys() != _ENVELOPE_KEYS:
            raise DecodeError(_key_mismatch(document.keys()))
        name = document["name"]
        version = document["version"]
        if type(name) is not str:
            raise DecodeError(f"cannot decode envelope: name: expected a string, got {_show(name)}")
        _check_version(version)
        envelope_id = _decode_envelope_uuid(document["id"], "id")
        occurred_at = _decode_envelope_time(document["occurred_at"])
        key = _decode_envelope_key(document["key"])
        correlation_id = _decode_envelope_uuid(document["correlation_id"], "correlation_id")
        causation = document["causation_id"]
        causation_id = (
            None if causation is None else _decode_envelope_uuid(causation, "causation_id")
        )
        headers = _decode_headers(document["headers"])
        info = self._registry.by_name(name)
        event = self._decode_data(info, version, document["data"], self._max_depth - 1)
        try:
            return Envelope(
                id=envelope_id,
                name=info.name,
                # The registered version, not the wire one: the event was upcast to it.
                version=info.version,
                occurred_at=occurred_at,
                event=event,
                key=key,
                correlation_id=correlation_id,
                causation_id=causation_id,
                headers=headers,
            )
        except (ConfigurationError, TypeError, ValueError) as exc:
            raise DecodeError(f"cannot decode envelope: {exc}") from exc

    def decode_event(self, name: str, version: int, data: Any) -> Any:
        """Build the registered class of ``name`` from a payload of ``version``.

        The payload is upcast first when it is older than the registered version.
        """
        info = self._registry.by_name(name)
        _check_version(version)
        return self._decode_data(info, version, data, self._max_depth)

    def _decode_data(self, info: EventType, version: int, data: Any, depth: int) -> Any:
        if type(data) is not dict:
            raise DecodeError(
                f"cannot decode {info.name!r}: data: expected a JSON object, got {_show(data)}"
            )
        if version != info.version:
            data = self._upcast(info, version, data)
        plan = self._plans.get(info.cls) or self._compile(info.cls, DecodeError)
        try:
            return plan.fast_decode(data, depth)
        except _WireError as exc:
            raise DecodeError(
                f"cannot decode {info.name!r}: {exc.path('data')}: {self._message(exc)}"
            ) from exc.__cause__
        except RecursionError:
            raise DecodeError(f"cannot decode {info.name!r}: data is nested too deeply") from None

    def _upcast(self, info: EventType, version: int, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._registry.upcast(info.name, version, data)
        except EventBusError:
            raise  # UnknownEventError for a newer version or a missing step, as it is
        except Exception as exc:
            raise DecodeError(
                f"cannot decode {info.name!r}: upcasting the version {version} payload to "
                f"version {info.version} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _parse(self, data: bytes | bytearray | memoryview | str) -> Any:
        kind = type(data)
        if kind is bytes or kind is str:
            size = len(data)
        elif isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, (bytes, bytearray, str)):
            size = len(data)
        else:
            raise DecodeError(f"expected bytes or str to decode, got {type(data).__name__}")
        # Before anything else: refusing a huge message must cost nothing.
        if size > self._max_size:
            raise DecodeError(
                f"message is {size} bytes, over the limit of {self._max_size} bytes (max_size)"
            )
        if isinstance(data, str):
            text = data
        else:
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(
                    f"message is not valid UTF-8 ({exc.reason} at byte {exc.start}): "
                    "it is not a JSON envelope"
                ) from None
        return _parse_json(text)

    # -- plans --

    def _compile(self, cls: type[Any], error: type[EncodeError | DecodeError]) -> _ClassPlan:
        compiler = _Compiler(self._plans)
        verb = "encode" if error is EncodeError else "decode"
        try:
            plan = compiler.class_plan(cls)
        except _PlanError as exc:
            raise error(f"cannot {verb} {cls.__qualname__}: {exc}") from None
        # Published only once every class it reaches is complete.
        self._plans.update(compiler.pending)
        return plan

    def _message(self, exc: _WireError) -> str:
        if isinstance(exc, _TooDeepError):
            return f"nested deeper than max_depth={self._max_depth}"
        return exc.message


# --- envelope fields -----------------------------------------------------------------------


class _Unusual(Exception):  # noqa: N818 - not an error: a signal to take the general path
    """Raised by the fast path of encode for what only the general path handles."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (days, seconds) since the epoch and the isoformat of that second, without its offset:
# the date and time of day cost more to format than the rest of an envelope together, and
# change once a second. Replaced as a whole, so a reader always sees a consistent triple.
_last_second: tuple[int, int, str] = (0, 0, _EPOCH.replace(tzinfo=None).isoformat())


def _time_text(value: object) -> str:
    """What value.isoformat() gives for an exact aware datetime (nothing in it needs JSON
    escaping); raises _Unusual for anything else (a subclass may format itself)."""
    global _last_second  # noqa: PLW0603 - one cache for the process
    if type(value) is not datetime:
        raise _Unusual
    if value.tzinfo is not UTC:
        if value.utcoffset() is None:
            raise _Unusual
        return value.isoformat()
    # Exact (timedelta arithmetic): the same second always gives the same days and seconds.
    delta = value - _EPOCH
    days = delta.days
    seconds = delta.seconds
    cached_days, cached_seconds, text = _last_second
    if seconds != cached_seconds or days != cached_days:
        text = value.replace(microsecond=0, tzinfo=None).isoformat()
        _last_second = (days, seconds, text)
    micro = delta.microseconds
    return "%s.%06d+00:00" % (text, micro) if micro else text + "+00:00"  # noqa: UP031


def _serialize(document: dict[str, Any]) -> bytes:
    try:
        text = _dumps(document)
    except (TypeError, ValueError) as exc:  # ValueError: an int over the str-digit limit
        raise EncodeError(f"cannot write the message as JSON: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _dumps_ascii(document).encode("ascii")


def _parse_json(text: str) -> Any:
    # The decoder's own scanner, without JSONDecoder.decode's two regex searches for
    # whitespace around the document: a message as encode writes it has none. Anything
    # else (whitespace, an error of any kind) is parsed again by _loads, which says why.
    try:
        document, end = _scan(text, 0)
    except Exception:  # noqa: S110 - _loads raises it again, with its message
        pass
    else:
        if end == len(text):
            return document
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            f"message is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _NonFiniteError as exc:
        raise DecodeError(
            f"message contains {exc.args[0]}, which strict JSON does not allow"
        ) from None
    except _DuplicateKeyError as exc:
        raise DecodeError(f"message has the key {exc.args[0]!r} twice in one object") from None
    except ValueError as exc:
        raise DecodeError(
            f"message has an integer literal with too many digits ({exc})"
            if "integer string conversion" in str(exc)
            else f"message is not valid JSON: {exc}"
        ) from None
    except RecursionError:
        raise DecodeError(
            "message is nested too deeply to parse (past the recursion limit)"
        ) from None


def _envelope_uuid(value: object, field: str) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise EncodeError(f"Envelope.{field} must be a UUID, got {_show(value)}")


def _envelope_time(value: object) -> str:
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.isoformat()
    raise EncodeError(f"Envelope.occurred_at must be an aware datetime, got {_show(value)}")


def _envelope_key(value: object) -> str | None:
    try:
        return check_key(value)
    except ConfigurationError as exc:
        raise EncodeError(f"Envelope.key: {exc}") from None


def _key_mismatch(keys: Iterable[str]) -> str:
    present = set(keys)
    problems = []
    missing = sorted(_ENVELOPE_KEYS - present)
    extra = sorted(present - _ENVELOPE_KEYS)
    if missing:
        problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
    if extra:
        problems.append(f"unexpected key(s) {', '.join(repr(k[:40]) for k in extra[:5])}")
    return f"cannot decode envelope: {'; '.join(problems)}"


def _check_version(version: object) -> None:
    if type(version) is not int or version < 1:
        raise DecodeError(f"cannot decode: version: expected an integer >= 1, got {_show(version)}")


def _envelope_field(decode: Converter, value: object, field: str) -> Any:
    try:
        return decode(value, 0)
    except _WireError as exc:
        raise DecodeError(f"cannot decode envelope: {field}: {exc.message}") from None


# The canonical text of a UUID, which encode writes: read without uuid.UUID's parsing of
# the other forms it accepts (braces, "urn:uuid:", no dashes), which go the general way.
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_new_uuid = object.__new__
_set_uuid_int = uuid.UUID.__dict__["int"].__set__
_set_uuid_safe = uuid.UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_trusted_envelope = Envelope._trusted


def _uuid_of(value: int) -> uuid.UUID:
    """uuid.UUID(int=value) for a value known to fit in 128 bits, as uuid.UUID builds it."""
    result: uuid.UUID = _new_uuid(uuid.UUID)
    _set_uuid_int(result, value)
    _set_uuid_safe(result, _SAFE_UNKNOWN)
    return result


def _decode_envelope_uuid(value: object, field: str) -> uuid.UUID:
    result: uuid.UUID = _envelope_field(_decode_uuid, value, field)
    return result


def _decode_envelope_time(value: object) -> datetime:
    result: datetime = _envelope_field(_decode_datetime, value, "occurred_at")
    return result


def _decode_envelope_key(value: object) -> str | None:
    if value is not None and type(value) is not str:
        raise DecodeError(
            f"cannot decode envelope: key: expected a string or null, got {_show(value)}"
        )
    try:
        return check_key(value)
    except ConfigurationError as exc:
        raise DecodeError(f"cannot decode envelope: key: {exc}") from None


def _decode_headers(value: object) -> dict[str, str]:
    if type(value) is not dict:
        raise DecodeError(
            f"cannot decode envelope: headers: expected an object, got {_show(value)}"
        )
    for name, item in value.items():
        if type(item) is not str:
            raise DecodeError(
                f"cannot decode envelope: headers{_segment(name)}: expected a string, "
                f"got {_show(item)}"
            )
    # Count and length limits are the Envelope's own (check_headers), applied on construction.
    return value
