"""The test project: the eventbus app and a small shop app, on SQLite and PostgreSQL.

Where the databases are comes from the environment (tests/django/fixtures.py sets it),
so that the ``manage.py`` processes a test starts use the same ones. Every request is
one transaction: by ``ATOMIC_REQUESTS`` on ``default``, by the view's own
``transaction.atomic()`` on ``postgresql`` (so that a request touches one database).
"""

import json
import os

SECRET_KEY = "eventbus-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = ["eventbus_contrib.django", "tests.django.shop"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.django.project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_host, _port, _user, _name, _schema = os.environ["EVENTBUS_TEST_DJANGO_POSTGRESQL"].split()

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["EVENTBUS_TEST_DJANGO_SQLITE"],
        "ATOMIC_REQUESTS": True,
    },
    "postgresql": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": _host,
        "PORT": _port,
        "USER": _user,
        "NAME": _name,
        "OPTIONS": {"options": f"-c search_path={_schema}"},
    },
}

# The project's bus (eventbus_contrib.django.bus): its outbox, inbox and dead letters in
# the default database. The transport and group come from the environment, if any. A
# manage.py process a test starts may be given other settings (JSON) in this variable.
EVENTBUS = json.loads(os.environ.get("EVENTBUS_TEST_DJANGO_SETTINGS", '{"database": "default"}'))
