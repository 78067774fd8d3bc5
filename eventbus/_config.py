"""Settings that choose the transport: keyword arguments, the environment, or TOML.

One spelling everywhere: the keyword argument ``transport_url=`` is ``EVENTBUS_TRANSPORT_URL``
in the environment and ``transport_url = "..."`` under ``[tool.eventbus]`` in
``pyproject.toml`` (or at the top level of an ``eventbus.toml``), in the working
directory. The first that says something wins, in that order: an argument, the
environment, ``eventbus.toml``, ``pyproject.toml``. This is what makes going from
``memory://`` to ``redis://`` a configuration change and never a code change.

A name that is not a setting is never silently ignored. In a file (ours alone) it is
refused. The environment is shared with other tools (Kubernetes, for one, sets
``EVENTBUS_SERVICE_HOST`` for a service named ``eventbus``), so there an
``EVENTBUS_*`` variable close to a setting's name (``EVENTBUS_TRANSPRT_URL``) is refused as
the typo it almost surely is, one that resembles none is warned about
(``ConfigurationWarning``), and ``EVENTBUS_IGNORE`` names the variables to leave alone.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import os
import sys
import tomllib
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ._redact import redact
from .errors import ConfigurationError, ConfigurationWarning
from .transports._link import TransportLink
from .transports._resolve import transport_from_url

if TYPE_CHECKING:
    from .typing import Transport

__all__ = [
    "SETTINGS",
    "Settings",
    "load_settings",
    "transport_from_settings",
    "transport_link",
]

SETTINGS = {
    "transport_url": "where durable events travel: memory://, redis://, amqp://, nats://",
    "group": "the consumer group of this service's workers (one per service)",
    "max_deliveries": "deliveries of one message before the worker dead-letters it",
    "worker": "whether this process consumes the transport (false: it only publishes)",
}
"""The settings, with what each one means (for errors and ``eventbus doctor``)."""

DEFAULT_GROUP = "default"
DEFAULT_MAX_DELIVERIES = 10
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

PREFIX = "EVENTBUS_"
IGNORE = "EVENTBUS_IGNORE"
"""The variable naming other ``EVENTBUS_*`` variables to leave alone (names or patterns
such as ``EVENTBUS_PORT*``, separated by commas or spaces)."""
_VARIABLES = {f"{PREFIX}{name.upper()}": name for name in SETTINGS}
_NOT_SETTINGS = frozenset({IGNORE, "EVENTBUS_APP"})  # EVENTBUS_APP: the CLI's --app
_OWN_PREFIXES = ("EVENTBUS_TEST_", "EVENTBUS_BENCH_")  # eventbus's tests and benchmarks
_CLOSE = 0.75
"""How alike (difflib's ratio) a name must be to a setting's to be taken for its typo.
Typos score 0.8 and more (transprt_url 0.96, groups 0.91, max_delivery 0.85); names of
other things less (worker_port 0.71, test_postgresql_url 0.56, service_host 0)."""


@attrs.frozen
class Settings:
    transport_url: str | None = None
    group: str = DEFAULT_GROUP
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    worker: bool = True
    sources: dict[str, str] = attrs.field(factory=dict, eq=False)
    """Where each setting that was given came from: the keyword argument, the variable,
    or the key and its file."""

    def __repr__(self) -> str:
        url = redact(self.transport_url) if self.transport_url else None
        return f"Settings(transport_url={url!r}, group={self.group!r})"


def _close_to(name: str, known: Iterable[str]) -> str | None:
    """The known name that ``name`` looks like a typo of, if one does."""
    close = difflib.get_close_matches(name.lower(), list(known), n=1, cutoff=_CLOSE)
    return close[0] if close else None


def _from_file(path: Path, *, table: str | None) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigurationError(f"cannot read eventbus settings from {path}: {error}") from error
    if table is None:
        return document
    section = document.get("tool", {}).get(table, {})
    if not isinstance(section, dict):
        raise ConfigurationError(f"[tool.{table}] in {path} must be a table")
    return section


def _refuse_unknown_keys(values: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(SETTINGS))
    if not unknown:
        return
    guesses = []
    for name in unknown:
        close = _close_to(name, SETTINGS)
        guesses.append(f"{name!r} (did you mean {close!r}?)" if close else repr(name))
    raise ConfigurationError(
        f"unknown eventbus setting {', '.join(guesses)} in {where}; the settings are "
        f"{', '.join(SETTINGS)}"
    )


def _checked(values: Mapping[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """The values, typed; ``where(name)`` says where a setting came from, for errors."""
    checked: dict[str, Any] = {}
    for name, given in values.items():
        if given is None:
            continue
        value = given
        if name == "worker":
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                value = value.strip().lower() in _TRUE
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where(name)} must be true or false, got {value!r}")
        elif name == "max_deliveries":
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{where(name)} must be an int >= 1, got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise ConfigurationError(
                f"{where(name)} must be a non-empty string, got {redact(repr(value))}"
            )
        checked[name] = value.strip() if isinstance(value, str) else value
    return checked


def _from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings given as ``EVENTBUS_<NAME>``; refuses a near miss of a setting's
    name and warns about other ``EVENTBUS_*`` variables, except those ``EVENTBUS_IGNORE``
    names. Values are never shown: they may hold passwords."""
    values: dict[str, str] = {}
    leave = environ.get(IGNORE, "").replace(",", " ").split()
    typos: list[str] = []
    strangers: list[str] = []
    for variable in sorted(environ):
        if not variable.upper().startswith(PREFIX):
            continue
        name = _VARIABLES.get(variable)
        if name is not None:
            values[name] = environ[variable]
        elif not (
            variable in _NOT_SETTINGS
            or variable.startswith(_OWN_PREFIXES)
            or any(fnmatch.fnmatchcase(variable, pattern) for pattern in leave)
        ):
            close = _close_to(variable[len(PREFIX) :], SETTINGS)
            if close is not None:
                typos.append(f"{variable} (did you mean {PREFIX}{close.upper()}?)")
            else:
                strangers.append(variable)
    if typos:
        raise ConfigurationError(f"{_not_settings(typos)}. {_way_out(typos)}")
    if strangers:
        warnings.warn(
            ConfigurationWarning(
                f"{_not_settings(strangers)}; ignored. {_way_out(strangers)} to silence this"
            ),
            stacklevel=_outside_eventbus(),
        )
    return values


def _not_settings(variables: list[str]) -> str:
    names = ", ".join(variables)
    if len(variables) == 1:
        said = f"the environment variable {names} is not an eventbus setting"
    else:
        said = f"the environment variables {names} are not eventbus settings"
    return f"{said} (the settings: {', '.join(_VARIABLES)})"


def _way_out(variables: list[str]) -> str:
    one = len(variables) == 1
    return (
        f"If {'it belongs' if one else 'they belong'} to another tool, name "
        f"{'it' if one else 'them'} in {IGNORE} (e.g. {IGNORE}={variables[0].split()[0]})"
    )


def _outside_eventbus() -> int:
    """The stack level of the first caller outside eventbus: where a warning points."""
    package = str(Path(__file__).parent) + os.sep
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level


def load_settings(
    arguments: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    directory: Path | None = None,
) -> Settings:
    """The settings in force: ``arguments`` over the environment over the files."""
    environ = os.environ if environ is None else environ
    directory = Path.cwd() if directory is None else directory

    def argument(name: str) -> str:
        return f"the keyword argument {name}"

    def variable(name: str) -> str:
        return f"the environment variable {PREFIX}{name.upper()}"

    layers: list[tuple[Callable[[str], str], dict[str, Any]]] = [
        (argument, _checked(arguments or {}, argument)),
        (variable, _checked(_from_environment(environ), variable)),
    ]
    for path, table in (
        (directory / "eventbus.toml", None),
        (directory / "pyproject.toml", "eventbus"),
    ):
        document = str(path) if table is None else f"[tool.{table}] of {path}"

        def key(name: str, document: str = document) -> str:
            return f"{name} in {document}"

        values = _from_file(path, table=table)
        _refuse_unknown_keys(values, document)
        layers.append((key, _checked(values, key)))
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for where, values in layers:
        for name, value in values.items():
            if name not in chosen:
                chosen[name] = value
                sources[name] = where(name)
    return Settings(**chosen, sources=sources)


def transport_from_settings(settings: Settings) -> Transport | None:
    """The transport ``settings.transport_url`` names (None without one). A refusal of
    the URL says where it came from: the variable, or the key and its file."""
    url = settings.transport_url
    if url is None:
        return None
    try:
        return transport_from_url(url)
    except ConfigurationError as error:
        where = settings.sources.get("transport_url", "transport_url")
        raise type(error)(f"{where}: {error}") from error.__cause__


def transport_link(
    *,
    transport_url: str | None,
    transport: Transport | None,
    group: str | None,
    max_deliveries: int | None,
    worker: bool | None,
) -> tuple[TransportLink | None, bool]:
    """A bus's transport, from its arguments or else its settings (the environment, the
    TOML files), and whether this process consumes it (its worker). The bus's constructor
    only assembles what this returns: reading settings is here."""
    arguments = {
        "transport_url": transport_url,
        "group": group,
        "max_deliveries": max_deliveries,
        "worker": worker,
    }
    if transport is not None and transport_url is not None:
        raise ConfigurationError("give transport_url or transport, not both")
    settings = load_settings(arguments)
    remake = None
    if transport is None:
        transport = transport_from_settings(settings)  # a refusal names the URL's source
        url = settings.transport_url
        if transport is not None and url is not None:
            # A stopped bus starts again with a new transport made from the same URL.
            remake = functools.partial(transport_from_url, url)
    if transport is None:
        return None, settings.worker
    link = TransportLink(
        transport,
        group=settings.group,
        max_deliveries=settings.max_deliveries,
        remake=remake,
    )
    return link, settings.worker
