"""eventbus closes every connection it opens: no ResourceWarning from the relay, the
worker or the command line.

Each test runs a process as a user does, with every ResourceWarning shown
(``-W always::ResourceWarning``) and tracemalloc on (``PYTHONTRACEMALLOC``), and fails on
any ResourceWarning in its output. ``always`` rather than ``error``: an error raised in a
finaliser is only printed, without the allocation traceback tracemalloc gives a shown
warning, and one raised elsewhere could be swallowed by an ``except Exception`` on its
way out; a shown warning is always printed, with where the object was made. Python 3.13
warns about a ``sqlite3.Connection`` collected unclosed; every version warns about
sockets and files. The application here closes what it opened itself (its bus, its
stores, its own connections): what is left would be eventbus's.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

APP = """
import os, sqlite3
import eventbus
from eventbus import EventBus, SQLiteDeadLetterStore, SQLiteOutbox

@eventbus.event("resources.order_placed")
class OrderPlaced:
    n: int

DB = os.environ["APP_DB"]
bus = EventBus(
    outbox=SQLiteOutbox(DB, poll_interval=0.05),
    dead_letters=SQLiteDeadLetterStore(DB + ".dead"),
    relay=os.environ.get("APP_RELAY", "1") == "1",
    retry=eventbus.RetryPolicy.never(),
)

@bus.subscribe(delivery="durable")
def ship(event: OrderPlaced, connection: sqlite3.Connection) -> None:
    connection.execute("CREATE TABLE IF NOT EXISTS shipped (n INTEGER)")
    connection.execute("INSERT INTO shipped VALUES (?)", (event.n,))

@bus.subscribe(delivery="durable")
def refuse(event: OrderPlaced) -> None:
    raise RuntimeError("refused")

@bus.subscribe(delivery="after_commit")
def notify(event: OrderPlaced) -> None:
    pass
"""

WRITE = """
import gc, sqlite3, sys
from app import DB, OrderPlaced, bus

connection = sqlite3.connect(DB, isolation_level=None)
with bus.transaction(connection):
    for n in range(3):
        bus.publish(OrderPlaced(n=n))
connection.close()
if sys.argv[1:] == ["drain"]:
    bus.drain(timeout=60)
bus.close()
bus.outbox.close()
bus.dead_letters.close()
gc.collect()  # what was left unclosed is collected, and warns, now
print("written")
"""


def write_app(directory: Path) -> Path:
    """The application's modules in ``directory`` (also tests/transports' Redis case)."""
    (directory / "app.py").write_text(textwrap.dedent(APP))
    (directory / "write.py").write_text(textwrap.dedent(WRITE))
    return directory


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return write_app(tmp_path)


def environment(app: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "APP_DB": str(app / "app.sqlite3"),
        "EVENTBUS_APP": "app:bus",
        # A warning says where the object was made (5 frames: more makes Python slower).
        "PYTHONTRACEMALLOC": "5",
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
        **extra,
    }


def command(*args: str) -> list[str]:
    return [sys.executable, "-W", "always::ResourceWarning", *args]


def run(app: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=app,
        env=environment(app, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_no_resource_warning(stderr: str) -> None:
    assert "ResourceWarning" not in stderr, stderr
    assert "unclosed" not in stderr, stderr


def outbox_rows(app: Path) -> int:
    connection = sqlite3.connect(app / "app.sqlite3")
    try:
        return int(connection.execute("SELECT COUNT(*) FROM eventbus_outbox").fetchone()[0])
    finally:
        connection.close()


def test_a_script_with_the_relay_in_process_leaves_nothing_open(app: Path) -> None:
    result = run(app, "write.py", "drain")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "written"
    assert_no_resource_warning(result.stderr)
    assert outbox_rows(app) == 0
    assert "refused" in result.stderr  # the failing handler ran, and was dead-lettered


def test_the_relay_command_leaves_nothing_open(app: Path) -> None:
    written = run(app, "write.py", APP_RELAY="0")  # rows only; the command relays them
    assert written.returncode == 0, written.stderr
    assert_no_resource_warning(written.stderr)
    assert outbox_rows(app) == 6
    relay = subprocess.Popen(
        command("-m", "eventbus", "relay"),
        cwd=app,
        env=environment(app),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while outbox_rows(app):
            assert time.monotonic() < deadline, "the relay did not deliver the rows"
            assert relay.poll() is None, "the relay exited early"
            time.sleep(0.05)
        relay.send_signal(signal.SIGTERM)
        _, stderr = relay.communicate(timeout=60)
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.communicate()
    assert relay.returncode == 0, stderr
    assert_no_resource_warning(stderr)


def test_the_command_line_leaves_nothing_open(app: Path) -> None:
    assert run(app, "write.py", "drain").returncode == 0
    for args in (("outbox", "status"), ("dlq", "list"), ("dlq", "replay", "--all")):
        result = run(app, "-m", "eventbus", *args)
        assert result.returncode in (0, 1), result.stderr  # the replays fail again: 1
        assert result.stdout, args
        assert_no_resource_warning(result.stderr)


def test_a_worker_on_the_memory_transport_leaves_nothing_open(app: Path) -> None:
    """The relay forwards to ``memory://``, this process's worker consumes."""
    result = run(app, "write.py", "drain", EVENTBUS_TRANSPORT_URL="memory://resources")
    assert result.returncode == 0, result.stderr
    assert_no_resource_warning(result.stderr)
    assert outbox_rows(app) == 0
    assert "refused" in result.stderr


def test_the_worker_command_leaves_nothing_open(app: Path) -> None:
    worker = subprocess.Popen(
        command("-m", "eventbus", "worker", "--transport-url", "memory://resources"),
        cwd=app,
        env=environment(app),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        started = worker.stderr.readline()
        assert "worker for group" in started, started
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, stderr
    assert_no_resource_warning(stderr)
