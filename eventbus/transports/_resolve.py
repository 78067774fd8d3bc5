"""From a URL to a transport class: the alias table, entry points, and clear refusals.

The built-in schemes map to ``module:Class`` strings, imported only when a URL uses them,
so ``import eventbus`` never imports redis, aio-pika or nats. Other distributions add
schemes through the entry-point group ``eventbus.transports`` (name = scheme, value =
``module:Class``), read on the first scheme the table does not know, never at import.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from .._redact import redact
from ..errors import ConfigurationError, MissingDependencyError, UnknownTransportError

if TYPE_CHECKING:
    from ..typing import Transport

__all__ = ["ENTRY_POINT_GROUP", "transport_class", "transport_from_url"]

ENTRY_POINT_GROUP = "eventbus.transports"

# scheme -> (module:Class, the extra that installs its library, the library's import name)
_ALIASES: dict[str, tuple[str, str | None, str | None]] = {
    "memory": ("eventbus.transports._memory:MemoryTransport", None, None),
    "redis": ("eventbus_contrib.redis:RedisStreamsTransport", "redis", "redis"),
    "rediss": ("eventbus_contrib.redis:RedisStreamsTransport", "redis", "redis"),
    "amqp": ("eventbus_contrib.rabbitmq:RabbitMQTransport", "rabbitmq", "aio_pika"),
    "amqps": ("eventbus_contrib.rabbitmq:RabbitMQTransport", "rabbitmq", "aio_pika"),
    "nats": ("eventbus_contrib.nats:NATSTransport", "nats", "nats"),
    "tls": ("eventbus_contrib.nats:NATSTransport", "nats", "nats"),
    "kafka": ("eventbus_contrib.kafka:KafkaTransport", "kafka", "aiokafka"),
    "kafkas": ("eventbus_contrib.kafka:KafkaTransport", "kafka", "aiokafka"),
}


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-cased; a clear error for something that is not a URL."""
    if not isinstance(url, str) or "://" not in url:
        # The value itself is not echoed: without a scheme, a password in it cannot be
        # told apart from the rest to be masked.
        got = f"a {type(url).__name__}" if not isinstance(url, str) else "a str without '://'"
        raise ConfigurationError(
            f"a transport URL looks like 'redis://127.0.0.1:6379/0', got {got}"
        )
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigurationError(f"the transport URL {redact(url)!r} has no scheme")
    return scheme


def _plugins() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name.lower(): ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def transport_class(scheme: str) -> type[Transport]:
    """The class serving ``scheme``: the alias table first, then entry points."""
    known = _ALIASES.get(scheme)
    if known is not None:
        target, extra, library = known
        return _import(target, extra, library)
    plugins = _plugins()
    plugin = plugins.get(scheme)
    if plugin is None:
        choices = sorted({*_ALIASES, *plugins})
        close = difflib.get_close_matches(scheme, choices, n=1)
        hint = f"; did you mean '{close[0]}://'?" if close else ""
        raise UnknownTransportError(
            f"no transport serves the URL scheme '{scheme}://'{hint} Known schemes: "
            f"{', '.join(choices)}. Third-party transports register in the entry-point "
            f"group {ENTRY_POINT_GROUP!r}."
        )
    try:
        loaded = plugin.load()
    except ImportError as error:
        raise MissingDependencyError(
            f"the transport for '{scheme}://' ({plugin.value}) cannot be imported: {error}"
        ) from error
    return cast("type[Transport]", loaded)


def _import(target: str, extra: str | None, library: str | None) -> type[Transport]:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, "name", None)
        if library is not None and missing is not None and missing.split(".")[0] == library:
            raise MissingDependencyError(
                f'this transport needs the {library!r} library: pip install "eventbus[{extra}]"'
            ) from error
        raise
    return cast("type[Transport]", getattr(module, class_name))


def transport_from_url(url: str, /, **options: Any) -> Transport:
    """A transport for ``url`` (not connected yet): ``memory://``, ``redis://``, ``amqp://``,
    ``nats://``, ``kafka://``, or a scheme a plugin registered. ``options`` go to its
    ``from_url``."""
    return transport_class(scheme_of(url)).from_url(url, **options)
