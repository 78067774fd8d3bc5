"""Transport options in the URL's query string, so one setting carries them all.

``redis://127.0.0.1:6379/0?prefix=shop:&claim_idle=30`` is ``from_url(url, prefix="shop:",
claim_idle=30.0)``: a transport takes the query parameters that name its options (typed
like their defaults) and leaves the others in the URL for its client library. Keyword
arguments win over the query. A name that is neither the transport's option nor one its
client library reads is refused, with "did you mean" over both, since client libraries
ignore what they do not know (a misspelt ``exchange`` would silently pick the default).
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
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
            f"the option {name}={text!r} in the URL {_shown(url)!r} must be {_KINDS[type(default)]}"
        )
    return value


def _shown(url: str) -> str:
    """``url`` for an error: where it points, without the user part (a password, or a
    token as in ``nats://TOKEN@host``) and without the query (whose other values a
    misspelt name would keep ``redact`` from recognising as secret)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return redact(urlunsplit(parts._replace(netloc=netloc, query="", fragment="")))


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
    url: str,
    defaults: Mapping[str, Any],
    given: Mapping[str, Any],
    *,
    client_options: Collection[str] | None = None,
    transport: str = "this transport",
    client: str = "the client library",
) -> tuple[str, dict[str, Any]]:
    """``url`` without the query parameters that name options in ``defaults``, and the
    options: the defaults, then the query's values, then ``given`` (keyword arguments).

    Unknown keyword arguments are refused, naming the known ones. With
    ``client_options`` (the query parameters the client library reads), so is any other
    query parameter; without it (None) they all pass through to the client. ``transport``
    and ``client`` name the two in errors.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigurationError(
            f"{transport} has no option {_guessed(unknown, defaults)}; its options are "
            f"{', '.join(sorted(defaults)) or 'none'}"
        )
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    options = dict(defaults)
    strangers: list[str] = []
    for name, text in parse_qsl(parts.query, keep_blank_values=True):
        if name in defaults:
            options[name] = _coerce(name, text, defaults[name], url)
        else:
            kept.append((name, text))
            if client_options is not None and name not in client_options:
                strangers.append(name)
    if strangers:
        clients = sorted(client_options or ())
        raise ConfigurationError(
            f"the URL {_shown(url)!r} has the unknown option "
            f"{_guessed(sorted(set(strangers)), [*defaults, *clients])}; {transport}'s "
            f"options are {', '.join(sorted(defaults)) or 'none'}"
            + (f"; {client}'s are {', '.join(clients)}" if clients else "")
        )
    options.update(given)
    rest = urlunsplit(parts._replace(query=urlencode(kept)))
    return rest, options


def _guessed(names: list[str], known: Collection[str]) -> str:
    """``names``, each followed by the known name it looks like a typo of, if any."""
    shown = []
    for name in names:
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        shown.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return ", ".join(shown)
