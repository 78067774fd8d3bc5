"""A lenient, bounded look into a dead letter's bytes, without decoding any event class.

A letter keeps the bytes it was given, which may be anything: an envelope of an event
class that no longer exists, text that is not JSON, or JSON nested thousands of levels
deep (which the worker rightly refused, and which ``json`` cannot even read back without
a ``RecursionError``). ``peek`` reads what can be read safely: the top-level ``name``
and ``id`` of an envelope, and the whole JSON document when it is nested no deeper than
``max_depth``. It walks the text once, iteratively; nothing is deserialised into
classes, so the registry (the allow-list) is not involved.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import attrs

__all__ = ["MAX_DEPTH", "Peeked", "peek"]

MAX_DEPTH = 64
"""Levels of nesting up to which a payload is parsed and shown whole."""

_MAX_NAME = 200
# A JSON string (escapes included), or one of the structural characters.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]')
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")


@attrs.frozen
class Peeked:
    """What could be read of a payload."""

    document: Any = None
    """The JSON value, when the payload is JSON nested at most ``max_depth`` deep."""
    why_not: str | None = None
    """Why ``document`` is None (not UTF-8, not JSON, nested too deep), else None."""
    name: str | None = None
    """The top-level ``"name"``, when it is a short, printable string."""
    envelope_id: uuid.UUID | None = None
    """The top-level ``"id"``, when it is a UUID."""


def peek(payload: bytes, *, max_depth: int = MAX_DEPTH) -> Peeked:
    """Read what can be read of ``payload`` (see the module's docstring); never raises."""
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return Peeked(why_not=f"not UTF-8 text ({len(payload)} bytes)")
    depth, fields = _scan(text)
    name = fields.get("name")
    if name is not None and (len(name) > _MAX_NAME or not _PRINTABLE.fullmatch(name)):
        name = None
    envelope_id = None
    if fields.get("id") is not None:
        try:
            envelope_id = uuid.UUID(fields["id"])
        except ValueError:
            envelope_id = None
    if depth > max_depth:
        why = f"nested more than {max_depth} levels deep ({depth})"
        return Peeked(why_not=why, name=name, envelope_id=envelope_id)
    try:
        document = json.loads(text)
    except ValueError as error:
        return Peeked(why_not=f"not JSON: {error}", name=name, envelope_id=envelope_id)
    return Peeked(document=document, name=name, envelope_id=envelope_id)


def _scan(text: str) -> tuple[int, dict[str, str]]:
    """The deepest nesting of ``text``, and the string values of its top-level object's
    keys (``"key": "value"`` directly inside the outermost ``{``)."""
    depth = deepest = 0
    fields: dict[str, str] = {}
    previous: list[str] = []  # the last tokens seen at depth 1: key, colon
    for match in _TOKENS.finditer(text):
        piece = match.group()
        if piece in "[{":
            depth += 1
            deepest = max(deepest, depth)
            previous.clear()
        elif piece in "]}":
            depth -= 1
            previous.clear()
        elif depth == 1:
            if (
                piece.startswith('"')
                and len(previous) == 2  # key, colon
                and previous[1] == ":"
                and previous[0].startswith('"')
            ):
                key, value = _string(previous[0]), _string(piece)
                if key is not None and value is not None:
                    fields.setdefault(key, value)
                previous.clear()
            else:
                previous = [*previous[-1:], piece]
    return deepest, fields


def _string(piece: str) -> str | None:
    try:
        value = json.loads(piece)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
