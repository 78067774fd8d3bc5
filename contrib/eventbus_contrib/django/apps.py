"""The Django app: ``"eventbus_contrib.django"`` in ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["EventBusConfig"]


class EventBusConfig(AppConfig):  # type: ignore[misc] # Django ships no types
    """Its tables (migrations under the label ``eventbus``), ``manage.py eventbus``, and
    ``settings.EVENTBUS`` checked when Django starts: an unknown key stops it."""

    name = "eventbus_contrib.django"
    label = "eventbus"
    verbose_name = "eventbus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ._settings import checked_settings  # noqa: PLC0415 - after settings are loaded

        checked_settings()
