"""The pytest plugin in the test suite of a user's FastAPI, Flask and Django application
(``pytester``, in a subprocess each): the README's test modules for each, run as
written, and ``event_bus_isolation`` leaving no dead letter or outbox row of one test in
the next, on the stores each framework uses (``SQLAlchemyOutbox`` behind FastAPI and
Flask-SQLAlchemy, ``DjangoOutbox``).

Each application has a durable handler that refuses orders whose id starts with "bad"
(a dead letter), and a view that publishes ``OrderPlaced`` in the request's transaction.
The README's blocks are found by the fragment mark before them; each is a test module
(or a ``conftest.py``) of such an application, which this file writes around it.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tests.strict_warnings import FLAGS

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNER = "tests/frameworks/test_plugin_per_framework.py runs it"


def readme_block(mark: str) -> str:
    """The ```` ```python ```` block after the fragment mark that contains ``mark``."""
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!--\s*fragment:[^\n]*" + re.escape(mark) + r"[^\n]*-->\s*\n```python\n(.*?)\n```",
        text,
        re.DOTALL,
    )
    assert found is not None, f"README.md has no fragment block marked {mark!r}"
    assert RUNNER in found[0], "its mark must say which test runs it"
    return found[1] + "\n"


ORDERS = """
import eventbus


@eventbus.event("myapp.order_placed")
class OrderPlaced:
    order_id: str
"""

LEFTOVERS = """
import time

from eventbus import uuid7
from eventbus.outbox import PendingRow

{imports}


def test_a_leaves_a_dead_letter_and_a_row_behind({fixtures}):
    {request_bad_order}
    deadline = time.monotonic() + 30
    while event_bus.dead_letters.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event_bus.dead_letters.count() == 1
    event_bus.outbox.write_now(
        [PendingRow(uuid7(), "myapp.order_placed", "myapp.ship", None, b"{{}}")]
    )


def test_b_starts_clean({fixture}):
    assert event_bus.dead_letters.count() == 0
    assert event_bus.outbox.status().pending == 0
"""


def leftovers(fixture: str, *, imports: str, fixtures: str, request_bad_order: str) -> str:
    code = LEFTOVERS.format(
        imports=imports, fixtures=fixtures, request_bad_order=request_bad_order, fixture=fixture
    )
    return code.replace(
        "event_bus_isolation):", "event_bus_isolation):\n    event_bus = event_bus_isolation"
    )


def check_isolation(project: pytest.Pytester, **parts: str) -> None:
    """With ``event_bus_isolation`` the second test finds nothing of the first; without
    it (``event_bus`` alone), it finds the first's dead letter: the isolation did it."""
    project.makepyfile(test_leftovers=leftovers("event_bus_isolation", **parts))
    isolated = project.runpytest_subprocess(*FLAGS, "-p", "no:randomly", "test_leftovers.py")
    isolated.assert_outcomes(passed=2)
    # The same database file: another order, not to meet the first run's row.
    again = leftovers("event_bus", **parts).replace("bad-1", "bad-2")
    project.makepyfile(test_leftovers=again)
    shared = project.runpytest_subprocess("-p", "no:randomly", "test_leftovers.py")
    shared.assert_outcomes(passed=1, failed=1)
    shared.stdout.fnmatch_lines(["*test_b_starts_clean - AssertionError: assert * == 0"])


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.delenv("EVENTBUS_APP", raising=False)
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    for name in ("EVENTBUS_TRANSPORT_URL", "EVENTBUS_GROUP", "EVENTBUS_WORKER"):
        monkeypatch.delenv(name, raising=False)
    (pytester.path / "myapp").mkdir()
    (pytester.path / "myapp" / "orders.py").write_text(ORDERS, encoding="utf-8")
    return pytester


# -- FastAPI -------------------------------------------------------------------------------

FASTAPI_MAIN = """
import os
from collections.abc import Iterator
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from eventbus import EventBus, RejectEvent
from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore, SQLAlchemyOutbox
from eventbus_contrib.starlette import joined_bus, lifespan
from myapp.orders import OrderPlaced

here = os.path.dirname(os.path.abspath(__file__))
engine = sa.create_engine(f"sqlite:///{here}/shop.sqlite3")
bus = EventBus(outbox=SQLAlchemyOutbox(engine), dead_letters=SQLAlchemyDeadLetterStore(engine))
orders = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.String(50), primary_key=True))
orders.metadata.create_all(engine)


@bus.subscribe(name="myapp.ship", delivery="durable")
def ship(event: OrderPlaced, session: Session) -> None:
    if event.order_id.startswith("bad"):
        raise RejectEvent(f"order {event.order_id} cannot be shipped")


def get_session() -> Iterator[Session]:
    with Session(engine) as session, session.begin():
        yield session


app = FastAPI(lifespan=lifespan(bus))


@app.post("/orders/{order_id}")
def place_order(
    order_id: str,
    session: Annotated[Session, Depends(get_session)],
    bus: Annotated[EventBus, Depends(joined_bus(bus, get_session))],
) -> None:
    session.execute(orders.insert().values(id=order_id))
    bus.publish(OrderPlaced(order_id=order_id), key=order_id)
"""


@pytest.fixture
def fastapi_project(project: pytest.Pytester) -> pytest.Pytester:
    pytest.importorskip("fastapi")
    (project.path / "myapp" / "__init__.py").write_text("", encoding="utf-8")
    (project.path / "myapp" / "main.py").write_text(FASTAPI_MAIN, encoding="utf-8")
    project.makeini("[pytest]\neventbus_app = myapp.main:bus\n")
    return project


def test_the_readme_fastapi_test_runs(fastapi_project: pytest.Pytester) -> None:
    fastapi_project.makepyfile(test_readme=readme_block("FastAPI one"))
    fastapi_project.runpytest_subprocess(*FLAGS).assert_outcomes(passed=1)


def test_isolation_between_fastapi_tests(fastapi_project: pytest.Pytester) -> None:
    check_isolation(
        fastapi_project,
        imports="from fastapi.testclient import TestClient\n\nfrom myapp.main import app",
        fixtures="event_bus",
        request_bad_order=(
            "with TestClient(app) as client:\n"
            "        assert client.post('/orders/bad-1').status_code == 200\n"
            "        event_bus.drain(timeout=30)"
        ),
    )


# -- Flask ---------------------------------------------------------------------------------

FLASK_APP = """
import os

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from eventbus import RejectEvent
from eventbus_contrib.flask import EventBus
from myapp.orders import OrderPlaced

here = os.path.dirname(os.path.abspath(__file__))
db = SQLAlchemy()
events = EventBus(db=db)
orders = db.Table("orders", sa.Column("id", sa.String(50), primary_key=True))


@events.subscribe(name="myapp.ship", delivery="durable")
def ship(event: OrderPlaced, session: Session) -> None:
    if event.order_id.startswith("bad"):
        raise RejectEvent(f"order {event.order_id} cannot be shipped")


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{here}/shop.sqlite3"
    db.init_app(app)
    events.init_app(app)

    @app.post("/orders/<order_id>")
    def place_order(order_id: str) -> str:
        db.session.execute(orders.insert().values(id=order_id))
        events.publish(OrderPlaced(order_id=order_id), key=order_id)
        db.session.commit()
        return order_id

    with app.app_context():
        db.create_all()
    return app
"""

FLASK_CONFTEST = """
from collections.abc import Iterator

import pytest
from flask import Flask

from myapp import create_app, events


@pytest.fixture
def app() -> Iterator[Flask]:
    app = create_app()
    with app.app_context():
        yield app
        events.bus.close()


@pytest.fixture
def event_bus(app):
    return events.bus
"""


@pytest.fixture
def flask_project(project: pytest.Pytester) -> pytest.Pytester:
    pytest.importorskip("flask_sqlalchemy")
    (project.path / "myapp" / "__init__.py").write_text(FLASK_APP, encoding="utf-8")
    return project


def test_the_readme_flask_test_runs(flask_project: pytest.Pytester) -> None:
    flask_project.makepyfile(test_readme=readme_block("Flask one"))
    flask_project.runpytest_subprocess(*FLAGS).assert_outcomes(passed=1)


def test_isolation_between_flask_tests(flask_project: pytest.Pytester) -> None:
    """Each test has an app of its own, and a bus of its own, but the database is the
    same file: what one test left there is the next one's unless isolated."""
    flask_project.makeconftest(FLASK_CONFTEST)
    check_isolation(
        flask_project,
        imports="",
        fixtures="app, event_bus",
        request_bad_order=(
            "assert app.test_client().post('/orders/bad-1').status_code == 200\n"
            "    event_bus.drain(timeout=30)"
        ),
    )


# -- Django --------------------------------------------------------------------------------

DJANGO_FILES = {
    "mysite/__init__.py": "",
    "mysite/settings_for_tests.py": """
        import os

        import django

        here = os.path.dirname(os.path.abspath(__file__))
        SECRET_KEY = "tests"
        USE_TZ = True
        ALLOWED_HOSTS = ["testserver"]
        INSTALLED_APPS = ["eventbus_contrib.django", "myapp"]
        MIDDLEWARE = []
        ROOT_URLCONF = "mysite.urls"
        DATABASES = {
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(here, "tests.sqlite3"),
                "ATOMIC_REQUESTS": True,
                # The relay is a second writer: take the write lock at BEGIN (5.1+).
                "OPTIONS": {"transaction_mode": "IMMEDIATE"} if django.VERSION >= (5, 1) else {},
            }
        }
        EVENTBUS = {"database": "default"}
        """,
    "mysite/urls.py": """
        from django.urls import path

        from myapp.views import place_order

        urlpatterns = [path("orders", place_order)]
        """,
    "myapp/__init__.py": "",
    "myapp/apps.py": """
        from django.apps import AppConfig


        class MyAppConfig(AppConfig):
            name = "myapp"

            def ready(self):
                from myapp import handlers  # noqa: F401 - subscribes them
        """,
    "myapp/handlers.py": """
        from eventbus import RejectEvent
        from eventbus_contrib.django import bus
        from myapp.orders import OrderPlaced


        @bus.subscribe(name="myapp.ship", delivery="durable")
        def ship(event: OrderPlaced) -> None:
            if event.order_id.startswith("bad"):
                raise RejectEvent(f"order {event.order_id} cannot be shipped")
        """,
    "myapp/views.py": """
        from django.http import JsonResponse

        from eventbus_contrib.django import bus
        from myapp.orders import OrderPlaced


        def place_order(request):  # under ATOMIC_REQUESTS
            order_id = request.POST["order_id"]
            bus.publish(OrderPlaced(order_id=order_id), key=order_id)
            return JsonResponse({"order_id": order_id})
        """,
}


DJANGO_CONFTEST = """
import os

import django
import pytest
from django.core.management import call_command

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings_for_tests")
django.setup()


@pytest.fixture(scope="session", autouse=True)
def database():
    call_command("migrate", verbosity=0)
    yield
    from eventbus_contrib.django import bus

    bus.close()
"""


@pytest.fixture
def django_project(project: pytest.Pytester) -> pytest.Pytester:
    pytest.importorskip("django")
    for name, code in DJANGO_FILES.items():
        path = project.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(code), encoding="utf-8")
    project.makeini("[pytest]\neventbus_app = eventbus_contrib.django:bus\n")
    return project


def test_the_readme_django_test_runs(django_project: pytest.Pytester) -> None:
    django_project.makepyfile(test_readme=readme_block("a test of a Django project"))
    django_project.runpytest_subprocess(*FLAGS).assert_outcomes(passed=1)


def test_isolation_between_django_tests(django_project: pytest.Pytester) -> None:
    """The project's bus is made once, at import, with its tables in the tests' database:
    the isolation empties its outbox, inbox and dead letters between tests."""
    django_project.makeconftest(DJANGO_CONFTEST)
    check_isolation(
        django_project,
        imports="from django.test import Client",
        fixtures="event_bus",
        request_bad_order=(
            "assert Client().post('/orders', {'order_id': 'bad-1'}).status_code == 200\n"
            "    event_bus.drain(timeout=30)"
        ),
    )
