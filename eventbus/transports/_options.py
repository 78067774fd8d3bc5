"""Transport options in the URL's query string, so one setting carries them all.

``redis://127.0.0.1:6379/0?prefix=shop:&claim_idle=30`` is ``from_url(url, prefix="shop:",
claim_idle=30.0)``: a transport takes the query parameters that name its options (typed
like their defaults) and leaves the others in the URL for its client library. Keyword
arguments win over the query.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._redact import redact
from ..errors import ConfigurationError

__all__ = ["url_options"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, text: str, default: Any, url: str) -> Any:
    value = _typed(text, default)
    if value is _INVALID:
        raise ConfigurationError(
            f"the option {name}={text!r} in {redact(url)!r} must be {_KINDS[type(default)]}"
        )
    return value


_INVALID = object()
_KINDS = {bool: "true or false", int: "a whole number", float: "a number"}


def _typed(text: str, default: Any) -> Any:
    """``text`` as the type of ``default`` (or a number, or None, if it has none)."""
    if isinstance(default, bool):
        lowered = text.lower()
        return lowered in _TRUE if lowered in _TRUE | _FALSE else _INVALID
    converters: tuple[type[Any], ...] = ()
    if isinstance(default, int):
        converters = (int,)
    elif isinstance(default, float):
        converters = (float,)
    elif default is None:
        if text.lower() in {"", "none", "null"}:
            return None
        converters = (int, float, str)
    else:
        return text
    for convert in converters:
        try:
            return convert(text)
        except ValueError:
            continue
    return _INVALID


def url_options(
    url: str, defaults: Mapping[str, Any], given: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """``url`` without the query parameters that name options in ``defaults``, and the
    options: the defaults, then the query's values, then ``given`` (keyword arguments).

    Unknown keyword arguments are refused, naming the known ones.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigurationError(
            f"unknown option {', '.join(unknown)} for {redact(url)!r}; known: "
            f"{', '.join(sorted(defaults))}"
        )
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    options = dict(defaults)
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name in defaults:
            options[name] = _coerce(name, text, defaults[name], url)
        else:
            kept.append((name, text))
    options.update(given)
    rest = urlunsplit(parts._replace(query=urlencode(kept)))
    return rest, options
