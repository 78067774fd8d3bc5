"""Settings of the example: one SQLite file, every request one transaction."""

import os
from pathlib import Path

SECRET_KEY = "example-only"  # noqa: S105 - never deployed
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_shop.urls"
INSTALLED_APPS = ["eventbus_contrib.django", "examples.django_shop"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DATABASE", Path(__file__).parent / "shop.sqlite3"),
        "ATOMIC_REQUESTS": True,  # a view's publishes commit or roll back with it
    }
}
EVENTBUS = {"database": "default"}  # transport_url, group, ... as everywhere else
