"""The plans of the scalar types (str, int, float, bool, None, Decimal, datetime, date,
UUID), their encoders, decoders and JSON-text writers, in ``_SCALARS``.

The checks are exact on purpose: ``type(x) is int``, not isinstance, since a JSON true
is a bool and a bool is an int to Python; strings are measured before they reach a
parser (``_MAX_*_LENGTH``).
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import date, datetime
from decimal import Decimal
from json.encoder import encode_basestring as _quote
from typing import Any

from ._wire import _expected, _Plan, _show, _WireError

# Lengths of the longest valid text for each kind of string, with room to spare: longer
# text is refused before it reaches a parser.
_MAX_DECIMAL_LENGTH = 100
_MAX_DATETIME_LENGTH = 64
_MAX_UUID_LENGTH = 64
_MAX_DATE_LENGTH = 32
# Decimal() also accepts "NaN", "Infinity", whitespace, underscores and non-ASCII digits;
# the wire format is a plain JSON-style number written as a string.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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
