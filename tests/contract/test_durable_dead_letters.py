"""Durable dead letters on every outbox store: what they record, and how they replay.

Run on the stdlib ``SQLiteOutbox`` and on ``SQLAlchemyOutbox`` on SQLite, PostgreSQL and
MariaDB (servers that do not answer skip, or fail under CI=true). The application is one
module (``APP``), loaded in this process for ``bus.replay``/``bus.areplay`` and by the
installed ``eventbus dlq replay`` in a subprocess. Its handler ``stock.reserve`` takes the
store's connection (sqlite3) or session (SQLAlchemy) and writes an effect there: exactly
once, with its inbox mark. Whether it fails is a file flag beside the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.parametrize(
    "backend", ["sqlite3", "sqlite", "postgresql", "mariadb"], indirect=True
)

SCRIPT = shutil.which("eventbus", path=str(Path(sys.executable).parent))

APP = """
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import tenacity

from eventbus import EventBus, EventRegistry, RetryPolicy, SQLiteDeadLetterStore, event
from eventbus import SQLiteOutbox

HERE = Path(__file__).parent
REGISTRY = EventRegistry()
KIND, URL, PREFIX = os.environ["EB_KIND"], os.environ["EB_URL"], os.environ["EB_PREFIX"]
EFFECTS = f"{PREFIX}_effects"


@event("stock.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


def act(name, order_id, write=None):
    with open(HERE / f"{name}.log", "a") as log:
        log.write(f"{order_id} {datetime.now(UTC).isoformat()}\\n")
    if (HERE / f"fail-{name}").exists():
        raise RuntimeError(f"{name} refused {order_id}")
    if write is not None:
        write(order_id)


if KIND == "sqlite3":
    outbox = SQLiteOutbox(HERE / "app.db", poll_interval=0.05)
else:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

    engine = sa.create_engine(URL)
    outbox = SQLAlchemyOutbox(engine, prefix=PREFIX, poll_interval=0.05)

bus = EventBus(
    registry=REGISTRY,
    outbox=outbox,
    dead_letters=SQLiteDeadLetterStore(HERE / "dlq.db"),
    retry=RetryPolicy.never(),
    transport_url=os.environ.get("EB_TRANSPORT") or None,
)

if KIND == "sqlite3":

    @bus.subscribe(delivery="durable", name="stock.reserve")
    def reserve(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        insert = f"INSERT INTO {EFFECTS} (order_id) VALUES (?)"
        act("reserve", event.order_id, lambda order_id: connection.execute(insert, (order_id,)))

else:

    @bus.subscribe(delivery="durable", name="stock.reserve")
    def reserve(event: OrderPlaced, session: Session) -> None:
        insert = sa.text(f"INSERT INTO {EFFECTS} (order_id) VALUES (:order_id)")
        act("reserve", event.order_id, lambda order: session.execute(insert, {"order_id": order}))


@bus.subscribe(
    delivery="durable",
    name="stock.audit",
    retry=RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.3)),
)
def audit(event: OrderPlaced) -> None:
    act("audit", event.order_id)
"""


class Shop:
    """The app in a folder of its own, on the test's database."""

    def __init__(self, directory: Path, backend: Any, prefix: str, transport: str = "") -> None:
        self.directory = directory
        self.backend = backend
        self.prefix = prefix
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "EVENTBUS_APP"},
            "EB_KIND": backend.name,
            "EB_URL": backend.url,
            "EB_PREFIX": prefix,
            "EB_TRANSPORT": transport,
        }
        self.module_name = f"stock_app_{uuid.uuid4().hex[:8]}"
        (directory / f"{self.module_name}.py").write_text(APP)
        self._create_effects()
        self.app: ModuleType | None = None

    def _create_effects(self) -> None:
        ddl = f"CREATE TABLE {self.prefix}_effects (order_id VARCHAR(50) NOT NULL)"
        if self.backend.name == "sqlite3":
            with contextlib.closing(sqlite3.connect(self.directory / "app.db")) as db:
                db.execute(ddl)
            return
        import sqlalchemy as sa

        engine = sa.create_engine(self.backend.url)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(ddl)
        finally:
            engine.dispose()

    def load(self) -> ModuleType:
        """The app, imported in this process (once)."""
        if self.app is None:
            names = ("EB_KIND", "EB_URL", "EB_PREFIX", "EB_TRANSPORT")
            os.environ.update({name: self.env[name] for name in names})
            path = self.directory / f"{self.module_name}.py"
            spec = importlib.util.spec_from_file_location(self.module_name, path)
            assert spec is not None
            assert spec.loader is not None
            self.app = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.app)
        return self.app

    def close(self) -> None:
        if self.app is not None:
            self.app.bus.close()
            self.app.bus.dead_letters.close()
            self.app.outbox.close()
            engine = getattr(self.app, "engine", None)
            if engine is not None:
                engine.dispose()

    def fail(self, handler: str, failing: bool = True) -> None:
        flag = self.directory / f"fail-{handler}"
        if failing:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def calls(self, handler: str) -> list[tuple[str, datetime]]:
        log = self.directory / f"{handler}.log"
        if not log.exists():
            return []
        found = []
        for line in log.read_text().splitlines():
            order_id, moment = line.split(" ")
            found.append((order_id, datetime.fromisoformat(moment)))
        return found

    def effects(self) -> list[str]:
        query = f"SELECT order_id FROM {self.prefix}_effects ORDER BY order_id"
        if self.backend.name == "sqlite3":
            with contextlib.closing(sqlite3.connect(self.directory / "app.db")) as db:
                return [order_id for (order_id,) in db.execute(query)]
        app = self.load()
        with app.engine.connect() as connection:
            return [order_id for (order_id,) in connection.exec_driver_sql(query)]

    def publish(self, *order_ids: str) -> None:
        app = self.load()
        for order_id in order_ids:
            app.bus.publish(app.OrderPlaced(order_id=order_id), key=order_id)
        app.bus.start()

    def wait_for_letters(self, count: int) -> list[Any]:
        store = self.load().bus.dead_letters
        deadline = time.monotonic() + 60
        while store.count() < count:
            assert time.monotonic() < deadline, f"timed out waiting for {count} dead letters"
            time.sleep(0.02)
        return list(store.list())

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert SCRIPT is not None, "the eventbus console script is not installed in this venv"
        return subprocess.run(
            [SCRIPT, "dlq", *args, "--app", f"{self.module_name}:bus"],
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def shop(backend: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Shop]:
    """The app; through a worker (on the memory transport) if the test asks for it."""
    if backend.name != "sqlite3":
        request.getfixturevalue("make_engine")  # drops the test's tables at teardown
    transport = getattr(request, "param", "")
    made = Shop(tmp_path, backend, request.getfixturevalue("prefix"), transport)
    yield made
    made.close()


def only(letters: list[Any], handler: str) -> list[Any]:
    return [letter for letter in letters if letter.handler == handler]


def test_a_durable_dead_letter_records_when_the_row_first_failed(shop: Shop) -> None:
    shop.fail("audit")
    shop.publish("o-1")
    [letter] = only(shop.wait_for_letters(1), "stock.audit")
    calls = [moment for _, moment in shop.calls("audit")]
    assert len(calls) == letter.attempts == 3
    # The first failure, stamped when the first attempt failed: not the last attempt's.
    assert calls[0] <= letter.first_failed_at < calls[1]
    assert letter.last_failed_at >= calls[2]


def test_a_connection_taking_handler_is_replayed_in_its_transaction(shop: Shop) -> None:
    shop.fail("reserve")
    shop.publish("o-1", "o-2")
    letters = only(shop.wait_for_letters(2), "stock.reserve")
    assert len(letters) == 2
    assert {letter.message for letter in letters} == {"reserve refused o-1", "reserve refused o-2"}
    bus = shop.load().bus
    outbox = shop.load().outbox
    shop.fail("reserve", failing=False)

    first, second = sorted(letters, key=lambda letter: letter.message)
    replayed = bus.replay(first.id)
    assert (replayed.outcome, replayed.error) == ("replayed", None)
    assert asyncio.run(bus.areplay(second.id)).outcome == "replayed"

    assert shop.effects() == ["o-1", "o-2"]
    assert only(bus.dead_letters.list(), "stock.reserve") == []
    # The inbox marks committed with the effects: the envelopes are done, exactly once.
    assert outbox.seen("stock.reserve", first.envelope_id)
    assert outbox.seen("stock.reserve", second.envelope_id)


def test_a_replay_that_fails_again_rolls_back_and_keeps_the_handlers_own_error(
    shop: Shop,
) -> None:
    shop.fail("reserve")
    shop.publish("o-1")
    [letter] = only(shop.wait_for_letters(1), "stock.reserve")
    bus = shop.load().bus

    result = bus.replay(letter.id)

    assert result.outcome == "failed"
    assert result.error == "RuntimeError: reserve refused o-1"
    kept = bus.dead_letters.get(letter.id)
    assert (kept.error_type, kept.message, kept.attempts) == (
        "RuntimeError",
        "reserve refused o-1",
        2,
    )
    assert shop.effects() == []
    assert not shop.load().outbox.seen("stock.reserve", letter.envelope_id)


def test_a_replay_honours_the_inbox_mark_of_effects_committed_before(shop: Shop) -> None:
    """A letter whose envelope the handler has handled since (a redelivery, a replay whose
    letter could not be resolved): its effects are committed with the mark, so a replay
    must not apply them twice. It runs nothing and resolves the letter."""
    shop.fail("reserve")
    shop.publish("o-1")
    [letter] = only(shop.wait_for_letters(1), "stock.reserve")
    app = shop.load()
    shop.fail("reserve", failing=False)
    with app.outbox.handler_transaction() as resource:  # the effects and the mark, committed
        assert app.outbox.mark("stock.reserve", letter.envelope_id, resource)
    calls_before = len(shop.calls("reserve"))

    result = app.bus.replay(letter.id)

    assert (result.outcome, result.attempts, result.ok) == ("already_handled", 0, True)
    assert len(shop.calls("reserve")) == calls_before  # not run again
    assert only(app.bus.dead_letters.list(), "stock.reserve") == []


def test_dlq_replay_runs_a_connection_taking_handler_in_its_transaction(shop: Shop) -> None:
    shop.fail("reserve")
    shop.publish("o-1", "o-2")
    assert len(only(shop.wait_for_letters(2), "stock.reserve")) == 2
    shop.close()  # the application stops; an operator replays from a shell
    shop.app = None
    shop.fail("reserve", failing=False)

    replayed = shop.cli("replay", "--handler", "stock.reserve")

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout == "replayed 2, failed 0\n"
    assert shop.effects() == ["o-1", "o-2"]
    again = shop.cli("list", "--handler", "stock.reserve")
    assert again.stdout == "no dead letters\n"


@pytest.mark.parametrize("shop", ["memory://"], indirect=True)
def test_a_letter_a_worker_wrote_for_a_connection_taking_handler_replays(shop: Shop) -> None:
    """Through a transport the worker runs the handler; when it gives up, the inbox
    gets no mark (a mark says the effects are committed), so the replay runs it."""
    shop.fail("reserve")
    shop.publish("o-1")
    [letter] = only(shop.wait_for_letters(1), "stock.reserve")
    app = shop.load()
    assert app.bus.transport is not None
    assert not app.outbox.seen("stock.reserve", letter.envelope_id)
    shop.fail("reserve", failing=False)

    result = app.bus.replay(letter.id)

    assert (result.outcome, result.error) == ("replayed", None)
    assert shop.effects() == ["o-1"]
    assert app.outbox.seen("stock.reserve", letter.envelope_id)
