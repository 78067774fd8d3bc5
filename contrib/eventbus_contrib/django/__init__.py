"""eventbus inside Django: an app for ``INSTALLED_APPS``, configured by ``settings.EVENTBUS``.

How to use it is in the README ("Django"). In short: add ``"eventbus_contrib.django"`` to
``INSTALLED_APPS``, run ``manage.py migrate``, subscribe handlers on ``bus`` (the project's
bus, made from ``settings.EVENTBUS`` on first use) in a module your app's ``ready()``
imports, and publish inside ``transaction.atomic()``: the events commit or roll back
with it, savepoints included. ``manage.py eventbus ...`` is the ``eventbus`` command on
that bus.

For maintainers, the rooms of this package:

- ``_settings``: ``settings.EVENTBUS``, checked, and the bus made from it.
- ``_project``: the project's bus, made once, on first use.
- ``_outbox``: ``DjangoOutbox``; ``_sql``: its statements per database vendor;
  ``_transactions``: Django's atomic blocks as the unit of work.
- ``_deadletters``: ``DjangoDeadLetterStore``.
- ``_connection``: the stores' own connection, and the application's they are handed.
- ``models`` and ``migrations``: the tables; ``management``: ``manage.py eventbus``.
- ``_core``: every name taken from ``eventbus``, in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._core import MissingDependencyError

try:
    import django
except ImportError as error:  # pragma: no cover - the extra is installed in development
    raise MissingDependencyError(
        'eventbus_contrib.django needs Django 4.2 or later: pip install "eventbus[django]"'
    ) from error

if django.VERSION < (4, 2):  # pragma: no cover - the extra's floor
    raise MissingDependencyError(
        f"eventbus_contrib.django needs Django 4.2 or later, got {django.get_version()}: "
        'pip install -U "eventbus[django]"'
    )

from ._deadletters import DjangoDeadLetterStore
from ._outbox import DjangoOutbox
from ._settings import bus_from_settings

if TYPE_CHECKING:
    from ._core import EventBus

    bus: EventBus
    """The project's bus: made from ``settings.EVENTBUS`` the first time it is asked for."""

__all__ = ["DjangoDeadLetterStore", "DjangoOutbox", "bus", "bus_from_settings"]


def __getattr__(name: str) -> Any:
    if name == "bus":
        from ._project import project_bus  # noqa: PLC0415

        return project_bus()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
