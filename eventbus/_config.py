"""Settings that choose the transport: keyword arguments, the environment, or TOML.

One spelling everywhere: the keyword argument ``transport_url=`` is ``EVENTBUS_TRANSPORT_URL``
in the environment and ``transport_url = "..."`` under ``[tool.eventbus]`` in
``pyproject.toml`` (or at the top level of an ``eventbus.toml``), in the working
directory. The first that says something wins, in that order: an argument, the
environment, ``eventbus.toml``, ``pyproject.toml``. This is what makes going from
``memory://`` to ``redis://`` a configuration change and never a code change.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._redact import redact
from .errors import ConfigurationError

__all__ = ["SETTINGS", "Settings", "load_settings"]

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


@attrs.frozen
class Settings:
    transport_url: str | None = None
    group: str = DEFAULT_GROUP
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    worker: bool = True
    sources: dict[str, str] = attrs.field(factory=dict, eq=False)
    """Where each setting that was given came from (argument, environment, a file)."""

    def __repr__(self) -> str:
        url = redact(self.transport_url) if self.transport_url else None
        return f"Settings(transport_url={url!r}, group={self.group!r})"


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


def _checked(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        raise ConfigurationError(
            f"unknown eventbus setting {', '.join(map(repr, unknown))} in {source}; "
            f"known: {', '.join(SETTINGS)}"
        )
    checked: dict[str, Any] = {}
    for name, given in values.items():
        if given is None:
            continue
        value = given
        if name == "worker":
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                value = value.strip().lower() in _TRUE
            if not isinstance(value, bool):
                raise ConfigurationError(f"worker in {source} must be true or false, got {value!r}")
        elif name == "max_deliveries":
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"max_deliveries in {source} must be an int >= 1, got {value!r}"
                )
        elif not isinstance(value, str) or not value.strip():
            raise ConfigurationError(
                f"{name} in {source} must be a non-empty string, got {redact(repr(value))}"
            )
        checked[name] = value.strip() if isinstance(value, str) else value
    return checked


def load_settings(
    arguments: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    directory: Path | None = None,
) -> Settings:
    """The settings in force: ``arguments`` over the environment over the files."""
    environ = os.environ if environ is None else environ
    directory = Path.cwd() if directory is None else directory
    layers: list[tuple[str, dict[str, Any]]] = [
        ("keyword arguments", _checked(arguments or {}, "keyword arguments")),
        (
            "the environment",
            _checked(
                {
                    name: environ[f"EVENTBUS_{name.upper()}"]
                    for name in SETTINGS
                    if f"EVENTBUS_{name.upper()}" in environ
                },
                "the environment (EVENTBUS_*)",
            ),
        ),
    ]
    for path, table in (
        (directory / "eventbus.toml", None),
        (directory / "pyproject.toml", "eventbus"),
    ):
        where = str(path) if table is None else f"[tool.{table}] in {path}"
        layers.append((where, _checked(_from_file(path, table=table), where)))
    chosen: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in layers:
        for name, value in values.items():
            if name not in chosen:
                chosen[name] = value
                sources[name] = source
    return Settings(**chosen, sources=sources)
