"""Django for the tests: the test project configured once per process, its databases
made and removed, and fresh databases for the stores' contract suites.

``tests/conftest.py`` loads this as a plugin. Nothing imports Django until a test asks
for one of these fixtures, so a run without Django installed skips those tests only.

The project (``tests/django/project``) reads where its databases are from the
environment, set here before Django starts (so the ``manage.py`` processes a test starts
find the same ones): ``default`` is a SQLite file in a directory of this process's own,
``postgresql`` a schema of the ``test`` database named like every server name of this
run (``tests/servers.py``), dropped at the end of the session. The schema is made only
when a test asks for PostgreSQL (which skips, or fails under CI=true, when the server
does not answer).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import database_url, fresh_name, unavailable

SETTINGS = "tests.django.project.settings"
SQLITE_VARIABLE = "EVENTBUS_TEST_DJANGO_SQLITE"
POSTGRESQL_VARIABLE = "EVENTBUS_TEST_DJANGO_POSTGRESQL"
"""The PostgreSQL database of the project: ``host port user name schema``."""


def _postgresql_target() -> tuple[str | None, str]:
    """``host port user name`` of a PostgreSQL that answers, or None and why not."""
    try:
        import psycopg  # noqa: F401
        import sqlalchemy as sa
    except ImportError as error:
        return None, f"PostgreSQL needs psycopg and SQLAlchemy here: {error}"
    url, why = database_url("postgresql")
    if url is None:
        return None, f"postgresql is not reachable: {why}"
    parsed = sa.make_url(url)
    return f"{parsed.host} {parsed.port or 5432} {parsed.username} {parsed.database}", ""


_started: dict[str, Any] = {}


def start_django() -> None:
    """Configure the test project in this process (once), without touching a database."""
    if _started:
        return
    try:
        import django
    except ImportError:
        unavailable("Django is not installed (pip install 'eventbus[django]')")
    directory = tempfile.mkdtemp(prefix="eventbus-django-")
    os.environ[SQLITE_VARIABLE] = str(Path(directory) / "project.sqlite3")
    target, _ = _postgresql_target()
    schema = fresh_name()
    os.environ[POSTGRESQL_VARIABLE] = f"{target or '127.0.0.1 5432 postgres test'} {schema}"
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    _started.update(directory=directory, schema=schema, postgresql=target is not None)
    django.setup()
    from django.test.utils import setup_test_environment

    setup_test_environment()


def sqlite_file(path: str | Path) -> None:
    """A fresh SQLite database file in WAL mode (readers never wait for the writer)."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode = WAL")


def migrate(alias: str, app: str | None = None) -> None:
    from django.core.management import call_command

    arguments = [] if app is None else [app]
    call_command("migrate", *arguments, database=alias, verbosity=0, interactive=False)


def _postgresql_admin() -> Any:
    """A psycopg connection (autocommit) to the project's PostgreSQL database."""
    import psycopg

    host, port, user, name, _ = os.environ[POSTGRESQL_VARIABLE].split()
    return psycopg.connect(host=host, port=int(port), user=user, dbname=name, autocommit=True)


def require_postgresql() -> None:
    target, why = _postgresql_target()
    if target is None:
        unavailable(why)


@pytest.fixture(scope="session")
def django_project() -> Iterator[None]:
    """The test project, started, with its SQLite database ``default`` migrated."""
    start_django()
    from django.db import connections

    sqlite_file(os.environ[SQLITE_VARIABLE])
    migrate("default")
    yield
    _stop_project_buses()
    connections.close_all()
    shutil.rmtree(_started["directory"], ignore_errors=True)


@pytest.fixture(scope="session")
def django_postgresql(django_project: None) -> Iterator[str]:
    """The project's ``postgresql`` database: its schema made and migrated; dropped at the
    end of the session. Yields the alias."""
    require_postgresql()
    from django.db import connections

    schema = _started["schema"]
    with contextlib.closing(_postgresql_admin()) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        migrate("postgresql")
        yield "postgresql"
    finally:
        _stop_project_buses()
        connections.close_all()
        with contextlib.closing(_postgresql_admin()) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


_closers: list[Callable[[], None]] = []


def on_session_end(close: Callable[[], None]) -> None:
    """Close ``close`` before the project's databases go (a bus, a store)."""
    _closers.append(close)


def _stop_project_buses() -> None:
    while _closers:
        close = _closers.pop()
        with contextlib.suppress(Exception):
            close()


@pytest.fixture
def fresh_database(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Make a database of its own for a test, of a kind (``sqlite``, ``postgresql``), with
    the eventbus tables migrated: returns its alias, in ``DATABASES``. A SQLite file under
    ``tmp_path``, or a fresh PostgreSQL schema; both gone after the test, with the
    connections to them."""
    made: list[tuple[str, str | None]] = []

    def make(kind: str, *, migrated: bool = True) -> str:
        start_django()
        if kind == "postgresql":
            require_postgresql()
        alias = f"fresh_{len(made)}"
        schema = None
        if kind == "sqlite":
            path = tmp_path / f"{alias}.sqlite3"
            sqlite_file(path)
            config: dict[str, Any] = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}
        else:
            schema = fresh_name()
            with contextlib.closing(_postgresql_admin()) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")
            host, port, user, name, _ = os.environ[POSTGRESQL_VARIABLE].split()
            config = {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": host,
                "PORT": port,
                "USER": user,
                "NAME": name,
                "OPTIONS": {"options": f"-c search_path={schema}"},
            }
        made.append((alias, schema))
        add_database(alias, config)
        if migrated:
            migrate(alias, "eventbus")
        return alias

    yield make
    from django.db import connections

    for alias, schema in made:
        with contextlib.suppress(Exception):
            connections[alias].close()
        remove_database(alias)
        if schema is not None:
            with contextlib.closing(_postgresql_admin()) as admin:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def add_database(alias: str, config: dict[str, Any]) -> None:
    """``DATABASES[alias] = config`` while Django runs (tests only: Django reads its
    settings once, so its connection handler is told as well)."""
    from django.conf import settings
    from django.db import connections

    settings.DATABASES[alias] = config
    every = {"default": connections.settings["default"], alias: dict(config)}
    connections.settings[alias] = connections.configure_settings(every)[alias]


def remove_database(alias: str) -> None:
    from django.conf import settings
    from django.db import connections

    settings.DATABASES.pop(alias, None)
    connections.settings.pop(alias, None)
    with contextlib.suppress(AttributeError):
        delattr(connections._connections, alias)
