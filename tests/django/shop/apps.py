from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.django.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Handlers are subscribed when Django starts, as an application does it.
        from eventbus_contrib.django import bus

        from . import handlers

        handlers.BUSES["default"] = bus
        handlers.subscribe(bus)
