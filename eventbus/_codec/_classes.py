"""The plan of an attrs class or dataclass (``_ClassPlan``), and how its fields and
their type hints are read.

Each event class is inspected once, on first use. Its plan keeps the general encoder
and decoder, which raise the documented errors, and the fast ones generated for it
(``_generate``), which hand whatever they do not expect to the general ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, NamedTuple

import attrs

from ._generate import _generate
from ._parser import _dumps
from ._wire import (
    _ABSENT,
    Converter,
    _expected,
    _Field,
    _Plan,
    _PlanError,
    _segment,
    _TooDeepError,
    _WireError,
)


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
