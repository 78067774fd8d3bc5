"""Shared fixtures for tests that need a database server (or a SQLite file), and the
check that a run leaves nothing behind on the shared servers.

``backend`` is parametrised over ``sqlite``, ``postgresql`` and ``mariadb``: a test that
asks for ``engine`` (or ``backend``) runs once per database. Servers are reached on
loopback only; one that does not answer skips its tests with the reason, unless the
environment variable ``CI`` is ``"true"``, where it fails them. Each test gets a fresh
table ``prefix`` (this run's, see tests/servers.py), and its tables are dropped at
teardown.

``EVENTBUS_TEST_POSTGRESQL_URL`` and ``EVENTBUS_TEST_MARIADB_URL`` point the tests at
other servers. Libraries (SQLAlchemy, drivers) are imported inside the fixtures: tests
that use none of them never import them.

Every test removes what it made on a server, also when it fails. When the run ends (on
the xdist controller, after every worker), anything on the servers whose name carries this
run's id fails the run, listed in the summary (``tests/leftovers.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest

from tests import kafka_broker, leftovers
from tests.servers import (
    RUN_VARIABLE,
    database_connect_args,
    database_url,
    forget_run,
    fresh_name,
    run_named_anything,
    run_prefix,
    unavailable,
)

if TYPE_CHECKING:
    import sqlalchemy

# The Django test project's fixtures (tests/django/fixtures.py): Django is imported only
# by the tests that ask for them.
pytest_plugins = ["tests.django.fixtures"]

BACKENDS = ("sqlite", "postgresql", "mariadb")
# More kinds are not in the default: "sqlite3", a SQLite file for the stdlib
# ``SQLiteOutbox``, "third-party", one for the store a third party would write
# (tests/third_party.py), and "django-sqlite" and "django-postgresql", a database of the
# Django test project (tests/django/fixtures.py), which the contract suites ask for.


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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """One of the databases; servers that do not answer skip (fail under CI=true)."""
    kind: str = request.param
    if kind in ("django-sqlite", "django-postgresql"):
        database = kind.removeprefix("django-")
        from tests.django.fixtures import require_postgresql, start_django

        start_django()  # skips when Django is not installed
        if database == "postgresql":
            require_postgresql()  # skips when it does not answer (fails under CI=true)
        return Backend(
            kind,
            f"django:{database}",
            concurrent_writers=database == "postgresql",
            skip_locked=database == "postgresql",
        )
    if kind in ("sqlite3", "third-party"):  # a file for the stdlib store: needs no SQLAlchemy
        return Backend(
            kind,
            f"sqlite:///{tmp_path / 'app.db'}",
            concurrent_writers=False,
            skip_locked=False,
        )
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        unavailable("SQLAlchemy is not installed (pip install 'eventbus[sqlalchemy]')")
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
        unavailable(f"the {driver} driver is not installed")
    url, why = database_url(kind)
    if url is None:
        unavailable(f"{kind} is not reachable: {why}")
    return Backend(
        kind,
        url,
        concurrent_writers=True,
        skip_locked=True,
        notifications=kind == "postgresql",
    )


@pytest.fixture
def prefix() -> str:
    """Fresh table names for this test: ``{prefix}_outbox``, ``{prefix}_inbox``, ...
    (``eb``, this run's id, hex: see tests/servers.py)."""
    return fresh_name()


@pytest.fixture
def make_engine(backend: Backend, prefix: str) -> Iterator[Callable[..., sqlalchemy.Engine]]:
    """Engines on the test's database (each its own pool); all disposed at teardown, then
    every table named ``{prefix}_*`` is dropped."""
    import sqlalchemy as sa

    made: list[sa.Engine] = []

    def make(**options: Any) -> sa.Engine:
        options.setdefault("connect_args", database_connect_args(backend.name))
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

    engine = sa.create_engine(backend.url, connect_args=database_connect_args(backend.name))
    try:
        names = [n for n in sa.inspect(engine).get_table_names() if n.startswith(prefix)]
        if names:
            metadata = sa.MetaData()
            metadata.reflect(engine, only=names)
            metadata.drop_all(engine)
    finally:
        engine.dispose()


# -- this run's names, and what it left behind ------------------------------------------

_LEFT = pytest.StashKey[leftovers.Found]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Give the run its id (tests/servers.py): made here on the controller, and handed
    to xdist workers through ``workerinput`` (their environment may not be ours)."""
    if _is_xdist_worker(config):
        os.environ[RUN_VARIABLE] = config.workerinput[RUN_VARIABLE]  # type: ignore[attr-defined]
    else:
        os.environ[RUN_VARIABLE] = uuid.uuid4().hex[:6]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist, on the controller: every worker gets this run's id."""
    node.workerinput[RUN_VARIABLE] = os.environ[RUN_VARIABLE]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After every test and fixture (on every worker), fail the run if the servers hold
    anything named with this run's id. Runs once, on the controller."""
    config = session.config
    try:
        if _is_xdist_worker(config):
            # Its Kafka test broker stops with it: say what is left there, for the controller.
            kafka_broker.note_leftovers(os.environ[RUN_VARIABLE], run_prefix())
            return
        if not run_named_anything():
            return  # a run that named nothing on a server: nothing to look for
        found = leftovers.find(run_prefix())
        noted = kafka_broker.noted_leftovers(os.environ[RUN_VARIABLE])
        if noted:
            found.names["kafka, on the brokers of xdist workers"] = noted
        forget_run()
        config.stash[_LEFT] = found
        if found and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    finally:
        kafka_broker.stop()  # the Kafka test broker this process started, if any (by pid)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    found = config.stash.get(_LEFT, None)
    if found is None:
        return
    if found:
        terminalreporter.write_sep("=", f"left on the servers by this run ({run_prefix()})")
        for line in found.lines():
            terminalreporter.write_line(line, red=True)
        terminalreporter.write_line(
            "every test removes what it made, also when it fails: find the test by the name; "
            f"python -m tests.leftovers {run_prefix()} --remove-run cleans up"
        )
    elif found.unchecked:
        terminalreporter.write_line(
            "servers not checked for leftovers: " + "; ".join(found.lines()), yellow=True
        )


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
