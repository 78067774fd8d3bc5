"""The strict JSON reader and writer: the standard library's ``json``, set up once.

Only this parser ever touches bytes from the wire. It refuses what ``json`` lets
through by default and another reader might take differently: NaN and Infinity,
duplicate keys. The writer gives compact UTF-8 text and never NaN. ``_parse_json`` and
``_serialize`` turn their failures into the documented DecodeError and EncodeError.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import DecodeError, EncodeError


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
