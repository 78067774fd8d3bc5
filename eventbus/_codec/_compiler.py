"""The type → plan mapping: ``_Compiler`` turns a declared type into its plan.

It builds the plans of a class and of everything the class contains, all or nothing:
the codec publishes them only once every class reached is complete, and a class may
refer to itself through its own pending plan.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import types
import typing
from typing import Any, Literal, Union

import attrs

from ._choices import _enum_key, _enum_plan, _literal_plan, _optional_plan, _union_plan
from ._classes import _ClassPlan, _field_specs, _FieldSpec, _resolve_hints
from ._containers import _ANY, _KEYS, _dict_plan, _fixed_tuple_plan, _sequence_plan, _set_plan
from ._scalars import _SCALARS
from ._wire import _Field, _KeyPlan, _Plan, _PlanError, _type_label

_SUPPORTED = (
    "str, int, float, bool, None, Decimal, an aware datetime, date, UUID, an Enum, "
    "an attrs class or dataclass, list/tuple/set/frozenset/Sequence of those, "
    "dict/Mapping of those, Optional/Union/Literal, or Any"
)


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
