"""The JSON codec: envelopes and events to compact UTF-8 JSON and back, strictly.

msgspec reads and writes the JSON text; this module decides what each declared type
looks like in it, and refuses everything else. The wire format is what ``json.dumps``
writes with ``separators=(",", ":")`` and ``ensure_ascii=False``, byte for byte: msgspec
writes strings, integers and objects the same way, and floats are handed to it as the
text of their Python ``repr`` (its own float text differs in the exponent).

Reading is strict. msgspec parses a message in one pass, and the result is taken only
when writing it again gives back the very bytes read: the text was then canonical, so no
object in it had a key twice (a parser keeps one of two equal keys, another parser may
keep the other). Anything else (whitespace, escapes written another way, a key this
version does not know, an error of any kind) is parsed again by the standard library's
``json``, which refuses duplicate keys and NaN and says what is wrong. Either way only
classes found in the event registry, and the field types they declare, are ever built:
a message cannot name a class into existence.

Each event class is inspected once, on first use: its type hints become a tree of small
converters (``_Type``), kept by the codec.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import inspect
import json
import math
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, NamedTuple, Union

import attrs
import msgspec

from ._envelope import (
    EMPTY_HEADERS,
    Envelope,
    check_key,
    check_received_headers,
    check_received_key,
)
from ._events import EventRegistry, EventType, default_registry
from .errors import ConfigurationError, DecodeError, EncodeError, EventBusError

__all__ = ["JSONCodec"]

# A converter takes a value and the nesting budget left, and returns the converted value.
Converter = Callable[[Any, int], Any]
_ABSENT: Any = object()  # a field absent from an object (None is JSON null)
# Decimal() also takes "NaN", "Infinity", whitespace, "_" and non-ASCII digits; the wire
# form is a plain JSON-style number in a string. int() takes "+5", "05" and "5_0".
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_MAX_DECIMAL_LENGTH = 100
_SUPPORTED = (
    "str, int, float, bool, None, Decimal, an aware datetime, date, UUID, an Enum, "
    "an attrs class or dataclass, list/tuple/set/frozenset/Sequence of those, "
    "dict/Mapping of those, Optional/Union/Literal, or Any"
)


class _Wire(msgspec.Struct, gc=False):
    """The envelope as it is written, in its key order; every value is checked here.

    Not tracked by the garbage collector (a little faster to make): nothing it holds
    ever refers back to it.
    """

    id: Any
    name: Any
    version: Any
    occurred_at: Any
    key: Any
    correlation_id: Any
    causation_id: Any
    headers: Any
    data: Any


_ENVELOPE_KEYS = _Wire.__struct_fields__


# --- errors inside a value -----------------------------------------------------------------


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
    return f"{text[:57] + '...' if len(text) > 60 else text} ({type(value).__name__})"


def _expected(what: str, value: object) -> _WireError:
    return _WireError(f"expected {what}, got {_show(value)}")


def _segment(key: object) -> str:
    text = repr(key)
    return f"[{text[:40]}...]" if len(text) > 40 else f"[{text}]"


def _label(tp: object) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__qualname__
    return repr(tp).replace("typing.", "")


# --- the JSON text -------------------------------------------------------------------------

_fast_read = msgspec.json.Decoder(_Wire).decode
_fast_write = msgspec.json.Encoder().encode


class _NonFiniteError(ValueError):
    pass


class _DuplicateKeyError(ValueError):
    pass


def _refuse_constant(literal: str) -> Any:
    raise _NonFiniteError(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return result


_reference_read = json.JSONDecoder(
    parse_constant=_refuse_constant, object_pairs_hook=_unique_keys
).decode


def _reference(data: bytes | bytearray | memoryview | str) -> Any:
    """The document in ``data``, read by the standard library, or DecodeError saying why."""
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
    try:
        return _reference_read(text)
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
    except ValueError as exc:  # past sys.get_int_max_str_digits()
        raise DecodeError(f"message has an integer literal with too many digits ({exc})") from None
    except RecursionError:
        raise DecodeError(
            "message is nested too deeply to parse (past the recursion limit)"
        ) from None


def _write(wire: _Wire) -> bytes:
    try:
        try:
            return _fast_write(wire)
        except UnicodeEncodeError:
            # A lone surrogate (from "\ud800" in a received message) has no UTF-8 form:
            # the whole message in ASCII with escapes, as json.dumps writes it then.
            document = msgspec.structs.asdict(wire)
            text = json.dumps(
                document, allow_nan=False, separators=(",", ":"), default=_json_default
            )
            return text.encode()
    except (TypeError, ValueError) as exc:  # ValueError: an int over the str-digit limit
        raise EncodeError(f"cannot write the message as JSON: {exc}") from None


def _json_default(value: object) -> object:
    if isinstance(value, msgspec.Raw):
        return float(bytes(value))  # json writes its repr: the very text of the Raw
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _float_text(value: float) -> msgspec.Raw:
    return msgspec.Raw(float.__repr__(value))


def _plain(value: Any) -> Any:
    """A written value as plain JSON values (floats as floats), in fresh containers."""
    kind = type(value)
    if kind is msgspec.Raw:
        return float(bytes(value))
    if kind is list:
        return [_plain(item) for item in value]
    if kind is dict:
        return {key: _plain(item) for key, item in value.items()}
    return value


def _canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# --- scalars -------------------------------------------------------------------------------


class _NoShortcut:
    """Never instantiated: the ``exact`` of a type whose values always need converting."""


class _Type(NamedTuple):
    """How to write and read one declared type; ``accepts`` picks a union's member.

    A value of exactly the type ``exact`` (str, int, bool, None) is written and read as
    it is: a class field of such a type skips the call to its converter.
    """

    encode: Converter
    decode: Converter
    accepts: Callable[[Any], bool]
    label: str
    exact: type = _NoShortcut


class _Key(NamedTuple):
    """How to write a dict key as a JSON object key and read it back."""

    encode: Callable[[Any], str]
    decode: Callable[[str], Any]


def _exact(kind: type, what: str) -> Converter:
    """Takes exactly ``kind``: ``type(x) is int``, since a JSON true is an int to Python."""

    def convert(value: Any, _depth: int) -> Any:
        if type(value) is kind:
            return value
        raise _expected(what, value)

    return convert


def _text(parse: Callable[[str], Any], limit: int, expected: str, valid: str) -> Converter:
    """Reads a string of at most ``limit`` characters (longer is refused unparsed)."""

    def decode(value: Any, _depth: int) -> Any:
        if type(value) is not str:
            raise _expected(expected, value)
        if len(value) > limit:
            raise _WireError(f"{_show(value)} is longer than {limit} characters")
        try:
            return parse(value)
        except ValueError:
            raise _WireError(f"{_show(value)} is not {valid}") from None

    return decode


def _encode_str(value: Any, _depth: int) -> Any:
    if type(value) is str:
        return value
    if isinstance(value, str):  # a str subclass (StrEnum in a str field): plain text
        return str.__str__(value)
    raise _expected("str", value)


def _encode_int(value: Any, _depth: int) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise _expected("int", value)


def _encode_float(value: Any, _depth: int) -> Any:
    if isinstance(value, float):
        if math.isfinite(value):
            return _float_text(value)
        raise _WireError(f"{value!r} is not a finite float: strict JSON has no NaN or Infinity")
    if isinstance(value, int) and not isinstance(value, bool):
        return _float_text(_int_to_float(value))
    raise _expected("float", value)


def _decode_float(value: Any, _depth: int) -> Any:
    if type(value) is float:
        if math.isfinite(value):  # json reads 1e999 as inf without complaint
            return value
        raise _WireError(f"number {value!r} is out of the range of a float")
    if type(value) is int:  # JSON does not tell 1 from 1.0; other writers don't either
        return _int_to_float(value)
    raise _expected("a number", value)


def _int_to_float(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _WireError(f"integer {_show(value)} is too large for a float") from None


def _encode_decimal(value: Any, _depth: int) -> Any:
    if not isinstance(value, Decimal):
        raise _expected("Decimal", value)
    if not value.is_finite():
        raise _WireError(f"{value!r} is not finite: only finite decimals are written")
    text = str(value)
    if len(text) > _MAX_DECIMAL_LENGTH:  # decode would refuse it: say so at publish time
        raise _WireError(
            f"Decimal is {len(text)} characters long, over the {_MAX_DECIMAL_LENGTH} that "
            "decoding accepts: quantize() it"
        )
    return text


def _parse_decimal(text: str) -> Decimal:
    if not _DECIMAL_TEXT.fullmatch(text):
        raise ValueError(text)
    return Decimal(text)


def _encode_datetime(value: Any, _depth: int) -> Any:
    if not isinstance(value, datetime):
        raise _expected("an aware datetime", value)
    if value.utcoffset() is None:
        raise _WireError(
            f"naive datetime {value.isoformat()} has no timezone: use an aware datetime, "
            "for example datetime.now(UTC)"
        )
    return value.isoformat()


def _parse_aware(text: str) -> datetime:
    result = datetime.fromisoformat(text)
    if result.utcoffset() is None:
        raise _WireError(f"datetime {text!r} has no UTC offset: naive datetimes are refused")
    return result


def _is_date(value: object) -> bool:
    # A datetime is a date to isinstance(), but it would not survive date.fromisoformat.
    return isinstance(value, date) and not isinstance(value, datetime)


def _encode_date(value: Any, _depth: int) -> Any:
    if _is_date(value):
        return value.isoformat()
    raise _expected("date", value)


def _encode_uuid(value: Any, _depth: int) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _expected("UUID", value)


def _parse_uuid(text: str) -> uuid.UUID:
    """The canonical form (8-4-4-4-12 hex digits) or 32 hex digits, either case."""
    try:
        return msgspec.convert(text, uuid.UUID)
    except msgspec.ValidationError:  # a ValueError only from msgspec 0.21 on
        raise ValueError(text) from None


_decode_datetime = _text(_parse_aware, 64, "an ISO 8601 datetime string", "an ISO 8601 datetime")
_decode_uuid = _text(_parse_uuid, 64, "a UUID string", "a valid UUID")
_SCALARS: dict[object, _Type] = {
    str: _Type(_encode_str, _exact(str, "a JSON string"), lambda v: isinstance(v, str), "str", str),
    int: _Type(
        _encode_int,
        _exact(int, "an integer"),
        lambda v: isinstance(v, int) and not isinstance(v, bool),
        "int",
        int,
    ),
    float: _Type(_encode_float, _decode_float, lambda v: isinstance(v, float), "float"),
    bool: _Type(
        _exact(bool, "bool"),
        _exact(bool, "true or false"),
        lambda v: isinstance(v, bool),
        "bool",
        bool,
    ),
    type(None): _Type(
        _exact(type(None), "None"),
        _exact(type(None), "None"),
        lambda v: v is None,
        "None",
        type(None),
    ),
    Decimal: _Type(
        _encode_decimal,
        _text(
            _parse_decimal,
            _MAX_DECIMAL_LENGTH,
            "a decimal number written as a JSON string",
            "a finite decimal number",
        ),
        lambda v: isinstance(v, Decimal),
        "Decimal",
    ),
    datetime: _Type(
        _encode_datetime, _decode_datetime, lambda v: isinstance(v, datetime), "datetime"
    ),
    date: _Type(
        _encode_date,
        _text(date.fromisoformat, 32, "an ISO 8601 date string", "an ISO 8601 date"),
        _is_date,
        "date",
    ),
    uuid.UUID: _Type(_encode_uuid, _decode_uuid, lambda v: isinstance(v, uuid.UUID), "UUID"),
}


def _any(written: bool) -> Converter:
    """Any: plain JSON values, finite, within depth. Encoding gives a copy with floats as
    their text; decoding passes the value on as it is (the parsers only ever make plain
    JSON, but decode_event also takes dicts from elsewhere)."""

    def convert(value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            return value
        if kind is float:
            text = _encode_float(value, depth)
            return text if written else value
        if kind is list:
            items = _convert_all(value, convert, depth)
            return items if written else value
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    raise _WireError(f"JSON object keys are str, got key {_show(key)}")
            mapping = _convert_values(value, str, convert, depth)
            return mapping if written else value
        raise _WireError(
            f"{_show(value)} is not a plain JSON value: an Any field carries str, int, float, "
            "bool, None, and lists and str-keyed dicts of those; annotate the field with "
            "the real type instead"
        )

    return convert


_ANY = _Type(_any(written=True), _any(written=False), lambda _: True, "Any")


# --- containers ----------------------------------------------------------------------------


def _convert_all(items: Iterable[Any], convert: Converter, depth: int) -> list[Any]:
    """Each item converted one level down; a failure names the item's index."""
    if depth <= 0:
        raise _TooDeepError
    out = []
    for index, item in enumerate(items):
        try:
            out.append(convert(item, depth - 1))
        except _WireError as exc:
            exc.at(f"[{index}]")
            raise
    return out


def _convert_values(
    mapping: cabc.Mapping[Any, Any], key: Callable[[Any], Any], convert: Converter, depth: int
) -> dict[Any, Any]:
    if depth <= 0:
        raise _TooDeepError
    out = {}
    for k, v in mapping.items():
        try:
            out[key(k)] = convert(v, depth - 1)
        except _WireError as exc:
            exc.at(_segment(k))
            raise
    return out


def _sequence(item: _Type, accepts: type | tuple[type, ...], build: type, label: str) -> _Type:
    """list[X], tuple[X, ...] and Sequence[X]: a JSON array, read back as ``build``."""
    encode_item, decode_item = item.encode, item.decode
    accepted = "a list or a tuple" if isinstance(accepts, tuple) else accepts.__name__

    def is_accepted(value: Any) -> bool:
        return isinstance(value, accepts)

    def encode(value: Any, depth: int) -> Any:
        if not is_accepted(value):
            raise _expected(accepted, value)
        return _convert_all(value, encode_item, depth)

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list:
            raise _expected("a JSON array", value)
        items = _convert_all(value, decode_item, depth)
        return items if build is list else build(items)

    return _Type(encode, decode, is_accepted, label)


def _fixed_tuple(items: tuple[_Type, ...], label: str) -> _Type:
    """tuple[X, Y]: a JSON array of exactly that many items."""
    size = len(items)

    def convert(value: Any, depth: int, decoding: bool) -> list[Any]:
        if depth <= 0:
            raise _TooDeepError
        out = []
        for index, (plan, item) in enumerate(zip(items, value, strict=True)):
            try:
                out.append((plan.decode if decoding else plan.encode)(item, depth - 1))
            except _WireError as exc:
                exc.at(f"[{index}]")
                raise
        return out

    def encode(value: Any, depth: int) -> Any:
        if not isinstance(value, tuple) or len(value) != size:
            raise _expected(f"a tuple of {size} items", value)
        return convert(value, depth, decoding=False)

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list or len(value) != size:
            raise _expected(f"a JSON array of {size} items", value)
        return tuple(convert(value, depth, decoding=True))

    return _Type(encode, decode, lambda v: isinstance(v, tuple) and len(v) == size, label)


def _set(item: _Type, build: type, label: str) -> _Type:
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
        # Sorted, so equal sets give equal bytes whatever the hash seed: by value, or by
        # their JSON text where values do not compare (dicts, a mix of kinds).
        values = [_plain(item) for item in out]
        try:
            order = sorted(range(len(out)), key=values.__getitem__)
        except TypeError:
            order = sorted(range(len(out)), key=lambda index: _canonical(values[index]))
        return [out[index] for index in order]

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not list:
            raise _expected("a JSON array", value)
        items = _convert_all(value, decode_item, depth)
        try:
            result = build(items)
        except TypeError as exc:  # an unhashable item, e.g. a non-frozen dataclass
            raise _WireError(f"set items must be hashable: {exc}") from exc
        if len(result) != len(value):
            raise _WireError("the array has duplicate items, which a set cannot hold")
        return result

    return _Type(encode, decode, lambda v: isinstance(v, (set, frozenset)), label)


def _dict(key: _Key, item: _Type, accepts: type, label: str) -> _Type:
    """dict[K, V] and Mapping[K, V]: a JSON object with keys written as strings."""
    encode_key, decode_key = key
    encode_item, decode_item = item.encode, item.decode

    def is_accepted(value: Any) -> bool:
        return isinstance(value, accepts)

    def encode(value: Any, depth: int) -> Any:
        if not is_accepted(value):
            raise _expected(accepts.__name__, value)
        out = _convert_values(value, encode_key, encode_item, depth)
        if len(out) != len(value):
            raise _WireError("two keys are written as the same string")
        return out

    def decode(value: Any, depth: int) -> Any:
        if type(value) is not dict:
            raise _expected("a JSON object", value)
        out = _convert_values(value, decode_key, decode_item, depth)
        if len(out) != len(value):
            raise _WireError("two keys stand for the same value (e.g. '1.0' and '1.00')")
        return out

    return _Type(encode, decode, is_accepted, label)


def _str_key(value: Any) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    raise _expected("a str key", value)


def _decode_int_key(value: str) -> int:
    if not _INT_TEXT.fullmatch(value):
        raise _WireError(f"key {_show(value)} is not an integer written in decimal")
    try:
        return int(value)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        raise _WireError("integer key has too many digits") from None


def _key_of(scalar: _Type) -> _Key:
    return _Key(lambda k: scalar.encode(k, 0), lambda k: scalar.decode(k, 0))


_KEYS: dict[object, _Key] = {
    str: _Key(_str_key, str),
    int: _Key(lambda k: str(_encode_int(k, 0)), _decode_int_key),
    uuid.UUID: _key_of(_SCALARS[uuid.UUID]),
    date: _key_of(_SCALARS[date]),
    Decimal: _key_of(_SCALARS[Decimal]),
}


# --- enums, flags, literals, unions --------------------------------------------------------


def _constant(value: object, owner: str) -> Any:
    """The plain JSON form of an enum or Literal value, computed once per type."""
    if value is None or type(value) in (str, int, bool):
        return value
    if type(value) is float and math.isfinite(value):
        return value
    if isinstance(value, enum.Enum):
        return _constant(value.value, owner)
    if isinstance(value, (list, tuple)):
        return [_constant(item, owner) for item in value]
    for kind in (Decimal, datetime, date, uuid.UUID):
        if isinstance(value, kind):
            try:
                return _SCALARS[kind].encode(value, 0)
            except _WireError as exc:
                raise _PlanError(f"{owner} has a value that cannot be written: {exc}") from None
    raise _PlanError(f"{owner} has the value {_show(value)}, which JSON cannot represent")


def _written(plain: Any) -> Any:
    """A plain JSON constant as encode writes it: floats as their text."""
    if type(plain) is float:
        return _float_text(plain)
    if type(plain) is list:
        return [_written(item) for item in plain]
    return plain


def _lookup_key(value: Any) -> Any:
    """A hashable key for a JSON value that tells 1, 1.0 and true apart."""
    kind = type(value)
    if kind is list or kind is dict:
        return ("json", _canonical(value))
    return (kind, value)


def _choices(values: Iterable[Any]) -> str:
    shown = [repr(v) for v in values]
    return ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")


def _lookup(table: dict[Any, Any], what: str, choices: str) -> Converter:
    """Decode by looking a JSON value up among the allowed ones."""

    def decode(value: Any, _depth: int) -> Any:
        try:
            return table[_lookup_key(value)]
        except (KeyError, TypeError):
            raise _WireError(f"{_show(value)} is not {what} (one of {choices})") from None

    return decode


def _enum(cls: type[enum.Enum]) -> _Type:
    if issubclass(cls, enum.Flag):
        return _flag(cls)
    if not list(cls):
        raise _PlanError(f"enum {cls.__qualname__} has no members")
    to_wire: dict[Any, Any] = {}
    from_wire: dict[Any, Any] = {}
    for member in cls:
        plain = _constant(member.value, f"enum {cls.__qualname__}")
        key = _lookup_key(plain)
        if key in from_wire:
            raise _PlanError(
                f"enum {cls.__qualname__}: {from_wire[key]} and {member} are written as the "
                "same JSON value"
            )
        to_wire[member] = _written(plain)
        from_wire[key] = member
    label = cls.__qualname__

    def encode(value: Any, _depth: int) -> Any:
        if isinstance(value, cls):
            return to_wire[value]
        raise _expected(f"a member of {label}", value)

    choices = _choices(_plain(v) for v in to_wire.values())
    decode = _lookup(from_wire, f"a value of {label}", choices)
    return _Type(encode, decode, lambda v: isinstance(v, cls), label)


def _flag(cls: type[enum.Flag]) -> _Type:
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

    return _Type(encode, decode, lambda v: isinstance(v, cls), label)


def _literal(tp: object) -> _Type:
    label = _label(tp)
    to_wire: dict[Any, Any] = {}
    from_wire: dict[Any, Any] = {}
    for value in typing.get_args(tp):
        if not (value is None or type(value) in (str, int, bool) or isinstance(value, enum.Enum)):
            raise _PlanError(f"{label}: Literal values must be str, int, bool, None or Enum")
        plain = _constant(value, label)
        to_wire[(type(value), value)] = _written(plain)
        from_wire[_lookup_key(plain)] = value
    choices = _choices(typing.get_args(tp))

    def encode(value: Any, _depth: int) -> Any:
        try:
            return to_wire[(type(value), value)]
        except (KeyError, TypeError):  # TypeError: an unhashable value
            raise _WireError(f"{_show(value)} is not one of {choices}") from None

    def accepts(value: Any) -> bool:
        try:
            return (type(value), value) in to_wire
        except TypeError:
            return False

    return _Type(encode, _lookup(from_wire, "allowed", choices), accepts, label)


def _enum_key(cls: type[enum.Enum]) -> _Key:
    to_key: dict[Any, str] = {}
    from_key: dict[str, Any] = {}
    for member in cls:
        plain = _constant(member.value, f"enum {cls.__qualname__}")
        if type(plain) not in (str, int):
            raise _PlanError(
                f"enum {cls.__qualname__} is used as a dict key, so its values must be str or int"
            )
        to_key[member] = str(plain)
        from_key[str(plain)] = member
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

    return _Key(encode, decode)


def _optional(inner: _Type) -> _Type:
    """X | None, the common union, without the general union's trial and error."""
    encode_inner, decode_inner, accepts_inner = inner.encode, inner.decode, inner.accepts

    def encode(value: Any, depth: int) -> Any:
        return None if value is None else encode_inner(value, depth)

    def decode(value: Any, depth: int) -> Any:
        return None if value is None else decode_inner(value, depth)

    return _Type(encode, decode, lambda v: v is None or accepts_inner(v), f"{inner.label} | None")


def _union(members: tuple[_Type, ...]) -> _Type:
    """Encode with the first member the value is an instance of (then any that takes it,
    an int for a float); decode with the first member, in declared order, that accepts
    the JSON value."""
    label = " | ".join(member.label for member in members)

    def attempt(value: Any, depth: int, ordered: Iterable[_Type], decoding: bool) -> Any:
        problems: list[str] = []
        for member in ordered:
            try:
                return (member.decode if decoding else member.encode)(value, depth)
            except _TooDeepError:
                raise
            except _WireError as exc:
                problems.append(f"{member.label}: {exc.path('')}{exc.message}")
        raise _WireError(f"{_show(value)} matches no member of {label} ({'; '.join(problems)})")

    def encode(value: Any, depth: int) -> Any:
        ordered = [m for m in members if m.accepts(value)]
        rest = [m for m in members if m not in ordered]
        return attempt(value, depth, ordered + rest, decoding=False)

    def decode(value: Any, depth: int) -> Any:
        return attempt(value, depth, members, decoding=True)

    return _Type(encode, decode, lambda v: any(m.accepts(v) for m in members), label)


# --- attrs classes and dataclasses ---------------------------------------------------------


class _Class:
    """The converters of one attrs class or dataclass. Created empty and filled in once
    its fields are compiled, so a class can refer to itself (``children: list[Node]``).

    Per field, in the order the class declares them: ``writers`` holds (name, exact,
    encode) and ``readers`` (name, alias, exact, decode, required); the name is the key
    in the JSON object, the alias the keyword of ``__init__`` (attrs drops a leading
    underscore), and ``exact`` the type whose values need no converting (_Type.exact).
    """

    __slots__ = ("cls", "label", "names", "readers", "tolerant", "writers")

    def __init__(self, cls: type[Any], tolerant: bool) -> None:
        self.cls = cls
        self.label = cls.__qualname__
        self.tolerant = tolerant
        self.writers: tuple[tuple[str, type, Converter], ...] = ()
        self.readers: tuple[tuple[str, str, type, Converter, bool], ...] = ()
        self.names: frozenset[str] = frozenset()

    def encode(self, value: Any, depth: int) -> dict[str, Any]:
        if type(value) is not self.cls:
            raise _expected(self.label, value)
        if depth <= 0:
            raise _TooDeepError
        depth -= 1
        out: dict[str, Any] = {}
        for name, exact, encode in self.writers:
            item = getattr(value, name)
            try:
                out[name] = item if type(item) is exact else encode(item, depth)
            except _WireError as exc:
                exc.at(f".{name}")
                raise
        return out

    def decode(self, value: Any, depth: int) -> Any:
        if type(value) is not dict:
            raise _expected(f"a JSON object for {self.label}", value)
        if depth <= 0:
            raise _TooDeepError
        depth -= 1
        kwargs: dict[str, Any] = {}
        for name, alias, exact, decode, required in self.readers:
            item = value.get(name, _ABSENT)
            if item is _ABSENT:
                if required:
                    missing = _WireError(f"required field of {self.label} is missing")
                    missing.at(f".{name}")
                    raise missing
                continue  # the class default applies
            try:
                kwargs[alias] = item if type(item) is exact else decode(item, depth)
            except _WireError as exc:
                exc.at(f".{name}")
                raise
        if len(kwargs) != len(value):
            self._unknown_fields(value, depth)
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:
            # The class's own validators and converters have the last word on the data.
            raise _WireError(f"{self.label} refused the data: {exc}") from exc

    def _unknown_fields(self, value: dict[str, Any], depth: int) -> None:
        unknown = sorted(key for key in value if key not in self.names)
        if self.tolerant:  # ignored, but read all the same: plain JSON within max_depth
            for key in unknown:
                try:
                    _ANY.decode(value[key], depth)
                except _WireError as exc:
                    exc.at(f".{key}" if key.isidentifier() else _segment(key))
                    raise
            return
        refused = _WireError(
            f"unknown field: {self.label} has no field {unknown[0]!r} (its fields: "
            f"{', '.join(sorted(self.names)) or 'none'}); if a newer producer added it, "
            "JSONCodec(tolerant=True) reads the event without it"
        )
        refused.at(f".{unknown[0]}" if unknown[0].isidentifier() else _segment(unknown[0]))
        raise refused


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


class _Compiler:
    """Builds the converters of a class and of everything it contains, all or nothing:
    the codec keeps them only once every class reached is complete."""

    def __init__(self, done: dict[type[Any], _Class], tolerant: bool) -> None:
        self.done = done
        self.tolerant = tolerant
        self.pending: dict[type[Any], _Class] = {}

    def class_of(self, cls: type[Any]) -> _Class:
        known = self.done.get(cls) or self.pending.get(cls)
        if known is not None:
            return known
        plan = self.pending[cls] = _Class(cls, self.tolerant)  # first: a field may refer back
        specs = _field_specs(cls)
        hints = _resolve_hints(cls, specs)
        types_ = [self._field(cls, spec, hints) for spec in specs]
        plan.writers = tuple(
            (s.name, t.exact, t.encode) for s, t in zip(specs, types_, strict=True)
        )
        plan.readers = tuple(
            (s.name, s.alias, t.exact, t.decode, s.required)
            for s, t in zip(specs, types_, strict=True)
        )
        plan.names = frozenset(spec.name for spec in specs)
        return plan

    def _field(self, cls: type[Any], spec: _FieldSpec, hints: dict[str, Any]) -> _Type:
        annotation = hints.get(spec.name, spec.annotation)
        where = f"{cls.__qualname__}.{spec.name}"
        if annotation is None or isinstance(annotation, str):
            raise _PlanError(f"{where} has no resolvable type annotation; fix: annotate it")
        try:
            return self.compile(annotation)
        except _PlanError as exc:
            raise _PlanError(f"{where}: {exc}") from None

    def compile(self, tp: Any) -> _Type:
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
            return _enum(tp)
        if isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp)):
            plan = self.class_of(tp)
            return _Type(plan.encode, plan.decode, lambda v: type(v) is tp, plan.label)
        raise _PlanError(f"unsupported type {_label(tp)}; fix: use {_SUPPORTED}")

    def _generic(self, tp: Any, origin: Any, args: tuple[Any, ...]) -> _Type:
        label = _label(tp)
        if origin is Union or origin is types.UnionType:
            if len(args) == 2 and type(None) in args:
                return _optional(self.compile(args[0] if args[1] is type(None) else args[1]))
            return _union(tuple(self.compile(arg) for arg in args))
        if origin is Literal:
            return _literal(tp)
        if origin is typing.Annotated:
            return self.compile(args[0])
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return _sequence(self.compile(args[0]), tuple, tuple, label)
            return _fixed_tuple(tuple(self.compile(arg) for arg in args), label)
        if origin in (dict, cabc.MutableMapping, cabc.Mapping):
            key = self.key(args[0]) if args else _KEYS[str]
            value = self.compile(args[1]) if args else _ANY
            return _dict(key, value, cabc.Mapping if origin is cabc.Mapping else dict, label)
        if origin not in _COLLECTIONS:
            raise _PlanError(f"unsupported type {label}; fix: use {_SUPPORTED}")
        item = self.compile(args[0]) if args else _ANY
        if origin in (list, cabc.MutableSequence):
            return _sequence(item, list, list, label)
        if origin is cabc.Sequence:
            return _sequence(item, (list, tuple), tuple, label)
        return _set(item, set if origin in (set, cabc.MutableSet) else frozenset, label)

    def key(self, tp: Any) -> _Key:
        if isinstance(tp, typing.NewType):
            return self.key(tp.__supertype__)
        plan = _KEYS.get(tp)
        if plan is not None:
            return plan
        if isinstance(tp, type) and issubclass(tp, enum.Enum) and not issubclass(tp, enum.Flag):
            return _enum_key(tp)
        raise _PlanError(
            f"unsupported dict key type {_label(tp)}; fix: use str, int, UUID, date, "
            "Decimal or an Enum with str or int values as keys"
        )


# --- the envelope --------------------------------------------------------------------------


def _time_text(value: object) -> str:
    """Envelope.occurred_at as value.isoformat() writes it."""
    if type(value) is datetime and value.tzinfo is UTC:
        # msgspec writes a UTC time as isoformat() does, but for "Z" in place of
        # "+00:00", in a third of the time: the usual envelope time costs that much less.
        return _fast_write(value)[1:-2].decode() + "+00:00"
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.isoformat()  # another offset, or a subclass that formats itself
    raise EncodeError(f"Envelope.occurred_at must be an aware datetime, got {_show(value)}")


def _envelope_uuid(value: object, field: str) -> object:
    if type(value) is uuid.UUID:
        return value  # msgspec writes it as str() does
    if isinstance(value, uuid.UUID):
        return str(value)  # a subclass may write itself its own way
    raise EncodeError(f"Envelope.{field} must be a UUID, got {_show(value)}")


def _envelope_field(decode: Converter, value: object, field: str) -> Any:
    try:
        return decode(value, 0)
    except _WireError as exc:
        raise DecodeError(f"cannot decode envelope: {field}: {exc.message}") from None


def _decode_headers(value: object) -> cabc.Mapping[str, str]:
    if type(value) is not dict:
        raise DecodeError(
            f"cannot decode envelope: headers: expected an object, got {_show(value)}"
        )
    if not value:
        return EMPTY_HEADERS
    for name, item in value.items():
        if type(item) is not str:
            raise DecodeError(
                f"cannot decode envelope: headers{_segment(name)}: expected a string, "
                f"got {_show(item)}"
            )
    try:
        # The count and length limits, as a read-only copy, which Envelope then takes as
        # it is: control characters are refused where headers enter, not on the wire, so
        # a message published before that rule still decodes.
        return check_received_headers(value)
    except ConfigurationError as exc:
        raise DecodeError(f"cannot decode envelope: {exc}") from None


def _check_version(version: object) -> int:
    if type(version) is not int or version < 1:
        raise DecodeError(f"cannot decode: version: expected an integer >= 1, got {_show(version)}")
    return version


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def _positive(value: object, name: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


class JSONCodec:
    """Envelopes to compact UTF-8 JSON and back.

    ``max_size`` bounds a message in bytes (both ways: an event too large to be read is
    refused when it is published) and ``max_depth`` bounds the nesting of JSON arrays and
    objects, the envelope itself counting as one level.

    Forward compatibility: an envelope key this version does not know is ignored (a
    newer eventbus may add one; every key known here must be there). An event field its
    class does not declare is refused, unless ``tolerant=True``: then it is ignored, so
    consumers can read the events of a producer whose class gained an optional field,
    during a rolling deploy. A newer event *version* is refused either way.
    """

    content_type: ClassVar[str] = "application/json"

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        max_size: int = 1_048_576,
        max_depth: int = 32,
        tolerant: bool = False,
    ) -> None:
        if registry is not None and not isinstance(registry, EventRegistry):
            raise ConfigurationError(f"registry must be an EventRegistry, got {registry!r}")
        if type(tolerant) is not bool:
            raise ConfigurationError(f"tolerant must be True or False, got {tolerant!r}")
        self._registry = default_registry if registry is None else registry
        self._max_size = _positive(max_size, "max_size")
        self._max_depth = _positive(max_depth, "max_depth")
        self._tolerant = tolerant
        self._classes: dict[type[Any], _Class] = {}

    @property
    def registry(self) -> EventRegistry:
        return self._registry

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    @property
    def tolerant(self) -> bool:
        return self._tolerant

    def __repr__(self) -> str:
        return (
            f"JSONCodec(max_size={self._max_size}, max_depth={self._max_depth}, "
            f"tolerant={self._tolerant})"
        )

    # -- encoding --

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope as compact UTF-8 JSON; EncodeError if it cannot be written."""
        if not isinstance(envelope, Envelope):
            raise EncodeError(f"expected an Envelope, got {_show(envelope)}")
        info = self._registry.info(type(envelope.event))
        if envelope.name != info.name or envelope.version != info.version:
            raise EncodeError(
                f"the envelope says {envelope.name!r} version {envelope.version}, but its "
                f"event is a {info.cls.__qualname__}, registered as {info.name!r} version "
                f"{info.version}"
            )
        key = envelope.key
        if key is not None:
            try:
                check_key(key)
            except ConfigurationError as exc:
                raise EncodeError(f"Envelope.key: {exc}") from None
        ident, correlation, causation = envelope.id, envelope.correlation_id, envelope.causation_id
        headers = envelope.headers
        raw = _write(
            _Wire(
                ident if type(ident) is uuid.UUID else _envelope_uuid(ident, "id"),
                info.name,
                info.version,
                _time_text(envelope.occurred_at),
                key,
                correlation
                if type(correlation) is uuid.UUID
                else _envelope_uuid(correlation, "correlation_id"),
                causation
                if causation is None or type(causation) is uuid.UUID
                else _envelope_uuid(causation, "causation_id"),
                dict(headers) if headers else {},
                self._encode_data(info, envelope.event),
            )
        )
        if len(raw) > self._max_size:
            raise EncodeError(
                f"the encoded {info.name!r} message is {len(raw)} bytes, over the limit of "
                f"{self._max_size} bytes (max_size): send less data, or a reference to it"
            )
        return raw

    def encode_event(self, event: object) -> dict[str, Any]:
        """The payload of ``event`` as a JSON-ready dict (without the envelope)."""
        data: dict[str, Any] = _plain(self._encode_data(self._registry.info(type(event)), event))
        return data

    def _encode_data(self, info: EventType, event: object) -> dict[str, Any]:
        plan = self._classes.get(info.cls) or self._compile(info.cls, EncodeError)
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
        wire = self._read(data)
        if type(wire.name) is not str:
            raise DecodeError(
                f"cannot decode envelope: name: expected a string, got {_show(wire.name)}"
            )
        _check_version(wire.version)
        ident = _envelope_field(_decode_uuid, wire.id, "id")
        occurred_at = _envelope_field(_decode_datetime, wire.occurred_at, "occurred_at")
        key = wire.key
        if key is not None and type(key) is not str:
            raise DecodeError(
                f"cannot decode envelope: key: expected a string or null, got {_show(key)}"
            )
        try:
            check_received_key(key)
        except ConfigurationError as exc:
            raise DecodeError(f"cannot decode envelope: key: {exc}") from None
        correlation_id = (
            ident  # a root publication: its own correlation id
            if wire.correlation_id == wire.id
            else _envelope_field(_decode_uuid, wire.correlation_id, "correlation_id")
        )
        causation = wire.causation_id
        causation_id = (
            None if causation is None else _envelope_field(_decode_uuid, causation, "causation_id")
        )
        headers = _decode_headers(wire.headers)
        info = self._registry.by_name(wire.name)
        event = self._decode_data(info, wire.version, wire.data, self._max_depth - 1)
        return Envelope(
            id=ident,
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

    def _read(self, data: bytes | bytearray | memoryview | str) -> _Wire:
        """The envelope's keys in ``data``; DecodeError for what is not a JSON envelope."""
        kind = type(data)
        if kind is bytes or kind is str:
            size = len(data)
        elif isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, (bytes, bytearray, str)):
            size = len(data)
        else:
            raise DecodeError(f"expected bytes or str to decode, got {type(data).__name__}")
        if size > self._max_size:  # before anything else: refusing must cost nothing
            raise DecodeError(
                f"message is {size} bytes, over the limit of {self._max_size} bytes (max_size)"
            )
        try:
            raw = data.encode() if isinstance(data, str) else data
            wire = _fast_read(raw)
            if _fast_write(wire) == raw:  # canonical: no key twice, none unknown
                return wire
        except Exception:  # noqa: S110 - the reference parser reads it again and says why
            pass
        document = _reference(data)
        if type(document) is not dict:
            raise DecodeError(
                f"an envelope is a JSON object, got {_json_kind(document)} at the top level"
            )
        missing = [repr(name) for name in sorted(_ENVELOPE_KEYS) if name not in document]
        if missing:
            raise DecodeError(f"cannot decode envelope: missing key(s) {', '.join(missing)}")
        for name, value in document.items():
            if name not in _ENVELOPE_KEYS:  # ignored, but plain JSON within max_depth
                try:
                    _ANY.decode(value, self._max_depth - 1)
                except _WireError as exc:
                    raise DecodeError(
                        f"cannot decode envelope: {exc.path(name)}: {self._message(exc)}"
                    ) from None
        return _Wire(*(document[name] for name in _ENVELOPE_KEYS))

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
        plan = self._classes.get(info.cls) or self._compile(info.cls, DecodeError)
        try:
            return plan.decode(data, depth)
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

    # -- converters --

    def _compile(self, cls: type[Any], error: type[EncodeError | DecodeError]) -> _Class:
        compiler = _Compiler(self._classes, self._tolerant)
        try:
            plan = compiler.class_of(cls)
        except _PlanError as exc:
            verb = "encode" if error is EncodeError else "decode"
            raise error(f"cannot {verb} {cls.__qualname__}: {exc}") from None
        self._classes.update(compiler.pending)  # only once every class reached is complete
        return plan

    def _message(self, exc: _WireError) -> str:
        if isinstance(exc, _TooDeepError):
            return f"nested deeper than max_depth={self._max_depth}"
        return exc.message
