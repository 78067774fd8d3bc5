from django.apps import AppConfig


class ShopConfig(AppConfig):  # type: ignore[misc] # Django ships no types
    name = "examples.django_shop"
    label = "django_shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import handlers  # noqa: F401, PLC0415 - subscribes the handlers
