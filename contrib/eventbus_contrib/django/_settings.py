"""``settings.EVENTBUS``: the project's bus, described with the names used everywhere.

The eventbus settings keep their spelling (``transport_url``, ``group``,
``max_deliveries``, ``worker``); they are passed to ``EventBus`` as its keyword
arguments, so they win over ``EVENTBUS_*`` variables and the TOML files, and a setting
left out is still read from those. ``EventBus``'s other keyword arguments that make sense
in settings (``relay``, ``retry``, ``concurrency``, ``workers``, ``shutdown_timeout``),
the outbox's (``batch``, ``lease``, ``poll_interval``, ``notify``), ``database`` (the alias of
``DATABASES`` holding the outbox, the inbox and the dead letters) and ``dead_letters`` (a
store of your own instead) complete them. Any other key is refused, with what it looks
like a typo of.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Final

from django.conf import settings

from ._core import ConfigurationError, DeadLetterStore, EventBus

__all__ = ["KEYS", "bus_from_settings", "checked_settings"]

BUS_SETTINGS: Final = ("transport_url", "group", "max_deliveries", "worker")
"""The eventbus settings (``EVENTBUS_<NAME>``, ``[tool.eventbus]``): the same names here."""
BUS_ARGUMENTS: Final = ("relay", "retry", "concurrency", "workers", "shutdown_timeout")
OUTBOX_ARGUMENTS: Final = ("batch", "lease", "poll_interval", "notify")
KEYS: Final = (*BUS_SETTINGS, *BUS_ARGUMENTS, *OUTBOX_ARGUMENTS, "database", "dead_letters")

_CLOSE: Final = 0.75  # as close as the TOML settings' "did you mean" asks


def checked_settings(values: object = None) -> dict[str, Any]:
    """``settings.EVENTBUS`` (or ``values``), refused when it is not a mapping of known
    keys; absent, an empty one."""
    where = "settings.EVENTBUS"
    if values is None:
        values = getattr(settings, "EVENTBUS", {})
    if not isinstance(values, Mapping):
        raise ConfigurationError(
            f"{where} must be a dict of eventbus settings, got {type(values).__name__}"
        )
    unknown = sorted(str(name) for name in values if name not in KEYS)
    if unknown:
        guesses = []
        for name in unknown:
            close = difflib.get_close_matches(name.lower(), KEYS, n=1, cutoff=_CLOSE)
            guesses.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise ConfigurationError(
            f"unknown key {', '.join(guesses)} in {where}; the keys are {', '.join(KEYS)}"
        )
    return dict(values)


def bus_from_settings(values: Mapping[str, Any] | None = None) -> EventBus:
    """An ``EventBus`` made from ``settings.EVENTBUS`` (or ``values``, a mapping of the
    same keys): its outbox and dead letters in the Django database ``database``."""
    from ._deadletters import DjangoDeadLetterStore  # noqa: PLC0415 - no cycle at import
    from ._outbox import DjangoOutbox  # noqa: PLC0415

    given = checked_settings(values)
    database = given.pop("database", "default")
    outbox_options = {name: given.pop(name) for name in OUTBOX_ARGUMENTS if name in given}
    dead_letters = given.pop("dead_letters", None)
    if dead_letters is not None and not isinstance(dead_letters, DeadLetterStore):
        raise ConfigurationError(
            "settings.EVENTBUS['dead_letters'] must be a dead-letter store "
            f"(eventbus.typing.DeadLetterStore), got {type(dead_letters).__name__}; leave it "
            f"out to keep them in the database {database!r}"
        )
    try:
        outbox = DjangoOutbox(database, **outbox_options)
        return EventBus(
            outbox=outbox,
            dead_letters=DjangoDeadLetterStore(database) if dead_letters is None else dead_letters,
            **given,
        )
    except ConfigurationError as error:
        raise ConfigurationError(f"settings.EVENTBUS: {error}") from error
