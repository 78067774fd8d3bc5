"""The project's bus (``eventbus_contrib.django.bus``): made once, on first use.

Made from ``settings.EVENTBUS`` whenever something first asks for it: a handler module
subscribing while Django starts, or the ``eventbus`` command given ``--app
eventbus_contrib.django:bus`` with ``DJANGO_SETTINGS_MODULE`` set. In that last case
Django has not started yet, so it is started here (``django.setup()``), which imports the
apps and so subscribes their handlers, as ``manage.py`` would.
"""

from __future__ import annotations

import threading

import django
from django.apps import apps

from ._core import EventBus
from ._settings import bus_from_settings

__all__ = ["project_bus"]

_lock = threading.RLock()  # reentrant: django.setup() below imports modules that ask again
_bus: EventBus | None = None


def project_bus() -> EventBus:
    global _bus  # noqa: PLW0603 - the one bus of the project, made once
    with _lock:
        if _bus is None:
            _bus = bus_from_settings()
        made = _bus
        if not apps.ready and not apps.loading:
            django.setup()
    return made
