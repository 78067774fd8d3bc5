"""The plans of types that choose among values or types: enums and flags, Literal,
Optional and other unions, and enum dict keys.

Enum and Literal values are turned into their JSON form once, when the plan is built,
and looked up in a table both ways; a union tries its members in declared order.
"""

from __future__ import annotations

import enum
import math
import typing
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ._containers import _canonical
from ._parser import _dumps
from ._scalars import _SCALARS
from ._wire import (
    Converter,
    _expected,
    _KeyPlan,
    _Plan,
    _PlanError,
    _show,
    _text_of,
    _TooDeepError,
    _type_label,
    _WireError,
)

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
