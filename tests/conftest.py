"""Shared fixtures for tests that need a database server (or a SQLite file).

``backend`` is parametrised over ``sqlite``, ``postgresql`` and ``mariadb``: a test that
asks for ``engine`` (or ``backend``) runs once per database. Servers are reached on
loopback only; one that does not answer skips its tests with the reason, unless the
environment variable ``CI`` is ``"true"``, where it fails them. Each test gets a fresh
table ``prefix`` (uuid), so nothing leaks between tests; tables with that prefix are
dropped at teardown anyway.

``EVENTBUS_TEST_POSTGRESQL_URL`` and ``EVENTBUS_TEST_MARIADB_URL`` point the tests at
other servers. Libraries (SQLAlchemy, drivers) are imported inside the fixtures: tests
that use none of them never import them.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import pytest

if TYPE_CHECKING:
    import sqlalchemy

# Loopback only. PostgreSQL accepts (trust) the user postgres, or root on some setups.
SERVER_URLS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://root@127.0.0.1:5432/test",
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    ),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test",),
}
BACKENDS = ("sqlite", "postgresql", "mariadb")
# One more kind, "sqlite3", is not in the default: a SQLite file for the stdlib
# ``SQLiteOutbox``, which the outbox contract suite (tests/contract/conftest.py) asks for.


@attrs.frozen
class Backend:
    """A database to run a test against, and what it can do.

    Tests switch on these capabilities, never on the name.
    """

    name: str
    url: str
    concurrent_writers: bool
    """Several transactions may insert at once, so ids are not handed out in commit order
    (PostgreSQL sequences, InnoDB auto-increment); SQLite has one writer at a time."""
    skip_locked: bool
    """Claims skip rows another transaction holds (FOR UPDATE SKIP LOCKED)."""
    notifications: bool = False
    """A commit can wake relays in other processes (PostgreSQL LISTEN/NOTIFY)."""


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _unavailable(reason: str) -> NoReturn:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: servers are required)")
    pytest.skip(reason)


def _urls(kind: str) -> tuple[str, ...]:
    """Where to look for ``kind``: ``EVENTBUS_TEST_POSTGRESQL_URL`` (or ``..._MARIADB_URL``)
    if set, else the loopback defaults."""
    given = os.environ.get(f"EVENTBUS_TEST_{kind.upper()}_URL")
    return (given,) if given else SERVER_URLS[kind]


@functools.cache
def _probe(kind: str) -> tuple[str | None, str]:
    """The first URL of ``kind`` that answers, or None and why none did (cached)."""
    import sqlalchemy as sa

    errors: list[str] = []
    for url in _urls(kind):
        engine = sa.create_engine(url, connect_args=_connect_args(kind))
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as error:  # any failure means: not usable here
            errors.append(
                f"{engine.url.render_as_string(hide_password=True)}: {str(error).splitlines()[0]}"
            )
        else:
            return url, ""
        finally:
            engine.dispose()
    return None, "; ".join(errors)


def _connect_args(kind: str) -> dict[str, Any]:
    if kind == "postgresql":
        return {"connect_timeout": 3}
    if kind == "mariadb":
        return {"connect_timeout": 3}
    return {}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """One of the databases; servers that do not answer skip (fail under CI=true)."""
    kind: str = request.param
    if kind == "sqlite3":  # a file for the stdlib store: needs no SQLAlchemy
        return Backend(
            "sqlite3",
            f"sqlite:///{tmp_path / 'app.db'}",
            concurrent_writers=False,
            skip_locked=False,
        )
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        _unavailable("SQLAlchemy is not installed (pip install 'eventbus[sqlalchemy]')")
    if kind == "sqlite":
        return Backend(
            "sqlite",
            f"sqlite:///{tmp_path / 'app.db'}",
            concurrent_writers=False,
            skip_locked=False,
        )
    driver = "psycopg" if kind == "postgresql" else "pymysql"
    try:
        __import__(driver)
    except ImportError:
        _unavailable(f"the {driver} driver is not installed")
    url, why = _probe(kind)
    if url is None:
        _unavailable(f"{kind} is not reachable: {why}")
    return Backend(
        kind,
        url,
        concurrent_writers=True,
        skip_locked=True,
        notifications=kind == "postgresql",
    )


@pytest.fixture
def prefix() -> str:
    """Fresh table names for this test: ``{prefix}_outbox``, ``{prefix}_inbox``, ..."""
    return f"eb{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_engine(backend: Backend, prefix: str) -> Iterator[Callable[..., sqlalchemy.Engine]]:
    """Engines on the test's database (each its own pool); all disposed at teardown, then
    every table named ``{prefix}_*`` is dropped."""
    import sqlalchemy as sa

    made: list[sa.Engine] = []

    def make(**options: Any) -> sa.Engine:
        options.setdefault("connect_args", _connect_args(backend.name))
        if backend.name != "sqlite":
            options.setdefault("pool_size", 10)
            options.setdefault("max_overflow", 20)
        engine = sa.create_engine(backend.url, **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()
    _drop_tables(backend, prefix)


@pytest.fixture
def engine(make_engine: Callable[..., sqlalchemy.Engine]) -> sqlalchemy.Engine:
    """An engine on the test's database."""
    return make_engine()


def _drop_tables(backend: Backend, prefix: str) -> None:
    if backend.name == "sqlite":
        return  # the file lives under tmp_path
    import sqlalchemy as sa

    engine = sa.create_engine(backend.url, connect_args=_connect_args(backend.name))
    try:
        names = [n for n in sa.inspect(engine).get_table_names() if n.startswith(prefix)]
        if names:
            metadata = sa.MetaData()
            metadata.reflect(engine, only=names)
            metadata.drop_all(engine)
    finally:
        engine.dispose()


ASYNC_TEST_TIMEOUT = 120.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests on a fresh event loop each (no plugin needed), bounded."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    arguments = {name: pyfuncitem.funcargs[name] for name in names}

    async def bounded() -> None:
        async with asyncio.timeout(ASYNC_TEST_TIMEOUT):
            await pyfuncitem.obj(**arguments)

    asyncio.run(bounded())
    return True
