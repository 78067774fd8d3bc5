"""The plans of containers: Any (plain JSON values), sequences, tuples, sets, dicts,
and the plans of the dict key types in ``_KEYS``.

A container plan wraps the plan of its items and spends one level of the nesting
budget; on failure it adds the item's index or key to the error's path.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from ._scalars import (
    _decode_date,
    _decode_decimal,
    _decode_uuid,
    _encode_date,
    _encode_decimal,
    _encode_float,
    _encode_int,
    _encode_uuid,
)
from ._wire import (
    Converter,
    _expected,
    _KeyPlan,
    _Plan,
    _segment,
    _show,
    _TooDeepError,
    _WireError,
)

# int() accepts "+5", "05", " 5" and "5_0"; a key written by encode is always canonical.
_INT_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _always(_value: object) -> bool:
    return True


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
