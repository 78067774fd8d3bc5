"""The words every part of the codec shares: errors inside a value, and the plan types.

A plan says how to write and read one declared type (``_Plan``), one dict key type
(``_KeyPlan``) or one field of a class (``_Field``). The modules beside this one build
them; this one holds only what they all need, so that none of them imports another just
for an error class.

Errors inside a payload carry a path (``data.items[2].price``). The path is built only
when something fails: the happy path pays for a ``try`` block, which is free in 3.11.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from ._parser import _dumps

if TYPE_CHECKING:  # a class plan holds plans of its fields: the reference goes both ways
    from ._classes import _ClassPlan

# A converter takes a value and the nesting budget left, and returns the converted value.
Converter = Callable[[Any, int], Any]
# No value: a field absent from an object, a document not parsed yet (None is JSON null).
_ABSENT = object()


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


def _text_of(plan: _Plan) -> Converter:
    """A plan's text writer; the generic one is json.dumps of what its encoder returns."""
    if plan.text is not None:
        return plan.text
    encode = plan.encode

    def text(value: Any, depth: int) -> str:
        return _dumps(encode(value, depth))

    return text
