"""`eventbus relay` and `eventbus outbox`, run as a user runs them: subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

APP = """
import os, sqlite3
import eventbus
from eventbus import EventBus, SQLiteOutbox, SQLiteDeadLetterStore

@eventbus.event("cliout.order_placed")
class OrderPlaced:
    n: int

@eventbus.event("cliout.order_cancelled")
class OrderCancelled:
    n: int

DB = os.environ["APP_DB"]
bus = EventBus(
    outbox=SQLiteOutbox(DB, poll_interval=0.05),
    dead_letters=SQLiteDeadLetterStore(DB + ".dead"),
    relay=os.environ.get("APP_RELAY") == "1",
)

@bus.subscribe(delivery="durable")
def ship(event: OrderPlaced, connection: sqlite3.Connection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS shipped (n INTEGER)")
    connection.execute("INSERT INTO shipped VALUES (?)", (event.n,))

@bus.subscribe(delivery="durable")
def refund(event: OrderCancelled) -> None:
    pass

plain = EventBus()
"""

WRITE = """
import sqlite3, sys
from app import bus, OrderPlaced, OrderCancelled, DB
connection = sqlite3.connect(DB, isolation_level=None)
with bus.transaction(connection):
    for n in range(int(sys.argv[1])):
        bus.publish(OrderPlaced(n=n))
    bus.publish(OrderCancelled(n=0))
connection.close()
bus.close()
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    (tmp_path / "write.py").write_text(textwrap.dedent(WRITE))
    return tmp_path


def env(app: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "APP_DB": str(app / "app.sqlite3"), "EVENTBUS_APP": "app:bus", **extra}


def cli(app: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", *args],
        cwd=app,
        env=env(app, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(app: Path, count: int) -> None:
    subprocess.run(
        [sys.executable, "write.py", str(count)],
        cwd=app,
        env=env(app),
        check=True,
        timeout=60,
    )


def test_status_counts_what_waits(app: Path) -> None:
    write(app, 3)
    result = cli(app, "outbox", "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["pending"] == 4
    assert report["in_flight"] == 0
    assert report["delayed"] == 0
    assert report["dead_lettered"] == 0
    assert report["oldest_age_seconds"] >= 0
    assert report["by_name"] == {"cliout.order_cancelled": 1, "cliout.order_placed": 3}
    text = cli(app, "outbox", "status")
    assert text.returncode == 0
    assert "pending       4" in text.stdout
    assert "cliout.order_placed     3" in text.stdout


def test_init_creates_the_tables_and_prints_the_ddl(app: Path) -> None:
    result = cli(app, "outbox", "init")
    assert result.returncode == 0, result.stderr
    assert "outbox tables ready" in result.stdout
    ddl = cli(app, "outbox", "init", "--sql")
    assert ddl.returncode == 0
    assert "CREATE TABLE IF NOT EXISTS eventbus_outbox" in ddl.stdout
    assert "CREATE TABLE IF NOT EXISTS eventbus_inbox" in ddl.stdout


def test_a_bus_without_an_outbox_is_a_usage_error(app: Path) -> None:
    result = cli(app, "outbox", "status", "--app", "app:plain")
    assert result.returncode == 2
    assert "has no outbox" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("app_relay", ["0", "1"], ids=["app-relay-false", "app-relay-true"])
def test_relay_delivers_then_stops_gracefully_on_sigterm(app: Path, app_relay: str) -> None:
    """The README's pattern: the application's bus says relay=False (its web processes
    do not relay), and ``eventbus relay`` imports that same bus and relays."""
    write(app, 50)
    relay = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "relay"],
        cwd=app,
        env=env(app, APP_RELAY=app_relay),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = json.loads(cli(app, "outbox", "status", "--json").stdout)
            if status["pending"] == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the relay did not empty the outbox in 30 s")
        relay.send_signal(signal.SIGTERM)
        _out, err = relay.communicate(timeout=30)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    assert relay.returncode == 0, err
    assert "SIGTERM: finishing what is in flight" in err
    import sqlite3

    connection = sqlite3.connect(app / "app.sqlite3")
    try:
        shipped = [n for (n,) in connection.execute("SELECT n FROM shipped ORDER BY n")]
    finally:
        connection.close()
    assert shipped == list(range(50))
