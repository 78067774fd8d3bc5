"""The end of the interpreter finishes what a sync script published, on every Python.

Each test runs a script in a subprocess of the interpreter running the tests
(``sys.executable``), as a user runs it: CI runs this file on 3.11, 3.12 and 3.13. Python
3.12 refuses to start a thread once the interpreter is exiting, which is when a script that
never calls ``close()`` has its last deliveries finished: whatever they need must exist
before then.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

HEADER = """
import sys, threading, time
import eventbus
from eventbus import EventBus, RetryPolicy, SQLiteOutbox

@eventbus.event("exit.order_placed")
class OrderPlaced:
    n: int

def record(n: int) -> None:
    time.sleep(0.05)
    with open(sys.argv[1], "a") as out:
        out.write(f"{n}\\n")
"""

AFTER_COMMIT = """
bus = EventBus(retry=RetryPolicy.never())

@bus.subscribe(delivery="after_commit")
def slow(event: OrderPlaced) -> None:
    record(event.n)

for n in range(6):
    bus.publish(OrderPlaced(n=n))
# no close(): the interpreter's exit must still finish what was published
"""

DURABLE = """
outbox = SQLiteOutbox(sys.argv[2], poll_interval=30.0)  # only a commit wakes the relay
bus = EventBus(outbox=outbox, retry=RetryPolicy.never())

@bus.subscribe(delivery="durable")
def keep(event: OrderPlaced) -> None:
    record(event.n)

@bus.subscribe(delivery="after_commit")
def follow(event: OrderPlaced) -> None:
    record(100 + event.n)

for n in range(6):
    bus.publish(OrderPlaced(n=n))
# no close()
"""

STUCK = """
from eventbus import SQLiteDeadLetterStore

bus = EventBus(
    retry=RetryPolicy.never(),
    shutdown_timeout=0.5,
    dead_letters=SQLiteDeadLetterStore(sys.argv[2]),
    concurrency=int(sys.argv[3]),
)
never = threading.Event()

@bus.subscribe(delivery="after_commit")
def stuck(event: OrderPlaced) -> None:
    never.wait()

@bus.subscribe(delivery="after_commit")
def quick(event: OrderPlaced) -> None:
    record(event.n)

for n in range(2):
    bus.publish(OrderPlaced(n=n))
"""


def run_script(
    tmp_path: Path, body: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(HEADER + body))
    out = tmp_path / "handled.txt"
    out.touch()
    result = subprocess.run(
        [sys.executable, str(script), str(out), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, out


def handled(out: Path) -> list[int]:
    return sorted(int(n) for n in out.read_text().split())


def test_a_sync_script_that_exits_still_finishes_its_deliveries(tmp_path: Path) -> None:
    result, out = run_script(tmp_path, AFTER_COMMIT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert handled(out) == list(range(6))


def test_a_sync_script_that_exits_still_finishes_its_durable_deliveries(tmp_path: Path) -> None:
    """Through the in-process relay: every row is delivered and completed before the
    interpreter ends, with the after-commit deliveries beside them."""
    database = tmp_path / "app.db"
    result, out = run_script(tmp_path, DURABLE, str(database))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert handled(out) == [*range(6), *range(100, 106)]
    connection = sqlite3.connect(database)
    try:
        assert connection.execute("SELECT COUNT(*) FROM eventbus_outbox").fetchone() == (0,)
        assert connection.execute("SELECT COUNT(*) FROM eventbus_inbox").fetchone() == (6,)
    finally:
        connection.close()


def letters(database: Path) -> list[tuple[str, str, int, str]]:
    """(handler, error type, attempts, message) of each dead letter, by handler."""
    connection = sqlite3.connect(database)
    try:
        return sorted(
            connection.execute(
                "SELECT handler, error_type, attempts, message FROM eventbus_dead_letters"
            ).fetchall()
        )
    finally:
        connection.close()


def test_what_is_unfinished_at_the_shutdown_timeout_is_named_and_kept(tmp_path: Path) -> None:
    """A handler that never returns does not hold the process, and is not silent: the
    log says how many deliveries were cut short and whose, each is kept as a dead letter
    to replay (its handler may have run part way), and the quick handler's deliveries
    all ran."""
    database = tmp_path / "dead_letters.db"
    result, out = run_script(tmp_path, STUCK, str(database), "64")
    assert result.returncode == 0, result.stderr
    assert handled(out) == [0, 1]
    warnings = [line for line in result.stderr.splitlines() if "shutdown_timeout" in line]
    assert len(warnings) == 3, result.stderr  # the stop's warning, and one per letter kept
    assert "2 deliveries (__main__.stuck: 2)" in warnings[0]
    assert (
        "cancelled (their handlers may have run part way) and kept as dead letters" in (warnings[0])
    )
    cut = "__main__.stuck did not finish before the bus stopped (shutdown_timeout 0.5s)"
    assert (
        letters(database)
        == [
            (
                "__main__.stuck",
                "eventbus.errors.DeliveryCancelledError",
                1,
                f"{cut}; it may have run part way",
            ),
        ]
        * 2
    )
    assert "Traceback" not in result.stderr
    assert "could not" not in result.stderr
    assert "can't create new thread" not in result.stderr


def test_a_delivery_still_queued_at_the_shutdown_timeout_is_kept_too(tmp_path: Path) -> None:
    """One delivery at a time: the quick handler's wait behind the stuck one and never
    begin; they are kept as letters that say so."""
    database = tmp_path / "dead_letters.db"
    result, out = run_script(tmp_path, STUCK, str(database), "1")
    assert result.returncode == 0, result.stderr
    assert handled(out) == []
    kept = letters(database)
    assert [(handler, attempts) for handler, _, attempts, _ in kept] == [
        ("__main__.quick", 0),
        ("__main__.quick", 0),
        ("__main__.stuck", 0),
        ("__main__.stuck", 1),
    ]
    assert kept[0][3].endswith("; it had not started")
    assert "Traceback" not in result.stderr
