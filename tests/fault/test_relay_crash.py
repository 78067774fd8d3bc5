"""Crash and contention tests of the SQLite outbox and its relay, judged by a ledger.

The relay runs in a child process that the test kills with SIGKILL (never a graceful
stop) at random points, then restarts. The handler takes the relay's ``sqlite3.Connection``
and INSERTs into an ``effects`` table that has no unique constraint, so a duplicate
effect would show as a second row; the inbox mark commits in the same transaction.

The ledger: events committed, effects applied (all, distinct), numbers missing, rows
left in the outbox (and left leased), inbox rows. Run with ``-s`` to see it.

Also: eight writer processes and a relay on one WAL database at once (no SQLITE_BUSY may
reach a writer), and eight processes opening a database that does not exist yet at once.
"""

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbus import EventBus, EventRegistry, event
from eventbus.outbox import SQLiteOutbox

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HANDLER = "fault.apply"
EVENTS = 10_000
KILLS = 20
WRITERS = 8
PER_WRITER = 500

REGISTRY = EventRegistry()


@event("fault.numbered", registry=REGISTRY)
class Numbered:
    number: int


@event("fault.keyed", registry=REGISTRY)
class Keyed:
    key: str
    seq: int


KEYS = 1_000
PER_KEY = 4
RELAYS = 3
RESTARTS = 12


# The child processes: a relay that applies effects, and a writer that publishes in
# transactions. Same event and handler name as above, so rows written here match.
CHILD = textwrap.dedent(
    """
    import os, random, sqlite3, sys, time
    from pathlib import Path

    from eventbus import EventBus, EventRegistry, event
    from eventbus.outbox import SQLiteOutbox

    REGISTRY = EventRegistry()

    @event("fault.numbered", registry=REGISTRY)
    class Numbered:
        number: int

    @event("fault.keyed", registry=REGISTRY)
    class Keyed:
        key: str
        seq: int

    mode, path = sys.argv[1], sys.argv[2]

    if mode == "keyed-relay":
        # One of several relays; effects record (key, seq) so order per key can be judged.
        outbox = SQLiteOutbox(path, lease=1.0, poll_interval=0.02, batch=100)
        bus = EventBus(registry=REGISTRY, outbox=outbox)

        @bus.subscribe(name="fault.apply_keyed", delivery="durable")
        def apply_keyed(event: Keyed, connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO keyed_effects (key, seq, pid) VALUES (?, ?, ?)",
                (event.key, event.seq, os.getpid()),
            )

        bus.start()
        print("ready", flush=True)
        while True:
            time.sleep(3600)

    if mode == "relay":
        outbox = SQLiteOutbox(path, lease=1.0, poll_interval=0.05, batch=200)
        bus = EventBus(registry=REGISTRY, outbox=outbox)

        @bus.subscribe(name="fault.apply", delivery="durable")
        def apply(event: Numbered, connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO effects (number, pid) VALUES (?, ?)", (event.number, os.getpid())
            )

        bus.start()
        print("ready", flush=True)
        while True:
            time.sleep(3600)

    # A writer: its share of the numbers, in transactions of 1 to 5 events.
    index, count, go = int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    outbox = SQLiteOutbox(path)
    bus = EventBus(registry=REGISTRY, outbox=outbox, relay=False)

    @bus.subscribe(name="fault.apply", delivery="durable")
    def apply(event: Numbered, connection: sqlite3.Connection) -> None:
        raise AssertionError("a writer never delivers")

    connection = outbox.connect()
    chance = random.Random(index)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    first, written, transactions = index * count, 0, 0
    while written < count:
        size = min(chance.randint(1, 5), count - written)
        with bus.transaction(connection):
            for _ in range(size):
                number = first + written
                connection.execute("INSERT INTO orders (number) VALUES (?)", (number,))
                bus.publish(Numbered(number=number))
                written += 1
        transactions += 1
    connection.close()
    bus.close()
    outbox.close()
    print(f"written {written} in {transactions} transactions", flush=True)
    """
)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "app.db"
    outbox = SQLiteOutbox(path)
    outbox.close()
    connection = sqlite3.connect(path)
    try:
        connection.executescript(
            "CREATE TABLE effects (number INTEGER NOT NULL, pid INTEGER NOT NULL);"
            "CREATE TABLE orders (number INTEGER NOT NULL);"
            "CREATE TABLE keyed_effects (key TEXT NOT NULL, seq INTEGER NOT NULL, pid INTEGER);"
        )
    finally:
        connection.close()
    return path


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Every child started; any still alive at the end is killed (by its own pid)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def spawn(
    children: list[subprocess.Popen[str]], args: list[str], stderr_to: Path
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    with stderr_to.open("a") as stderr:
        child = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env=env,
        )
    children.append(child)
    return child


def wait_ready(child: subprocess.Popen[str], stderr_log: Path) -> None:
    """Block until the child printed "ready" (set up, imports done); fail if it exited."""
    assert child.stdout is not None
    line = child.stdout.readline()  # "" when the child died first (pytest-timeout bounds it)
    if line.strip() != "ready":
        child.wait(10)
        raise AssertionError(f"child not ready: {line!r}; stderr:\n{stderr_log.read_text()}")


def kill(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path, timeout=30)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def wait_for_empty_outbox(path: Path, relay: subprocess.Popen[str], timeout: float) -> None:
    status = SQLiteOutbox(path, create=False)
    try:
        deadline = time.monotonic() + timeout
        while (pending := status.status().pending) > 0:
            assert relay.poll() is None, "the relay died on its own"
            if time.monotonic() > deadline:
                raise AssertionError(f"{pending} outbox rows left after {timeout}s")
            time.sleep(0.1)
    finally:
        status.close()


def ledger(path: Path, expected: int) -> dict[str, int]:
    ((effects, distinct),) = query(path, "SELECT COUNT(*), COUNT(DISTINCT number) FROM effects")
    numbers = {number for (number,) in query(path, "SELECT DISTINCT number FROM effects")}
    ((outbox_rows, leased),) = query(
        path, "SELECT COUNT(*), COUNT(lease_owner) FROM eventbus_outbox"
    )
    ((inbox,),) = query(path, f"SELECT COUNT(*) FROM eventbus_inbox WHERE handler = '{HANDLER}'")
    return {
        "committed": expected,
        "effects": int(effects),  # type: ignore[call-overload]
        "distinct": int(distinct),  # type: ignore[call-overload]
        "lost": len(set(range(expected)) - numbers),  # type: ignore[arg-type]
        "unexpected": len(numbers - set(range(expected))),  # type: ignore[arg-type]
        "duplicates": int(effects) - int(distinct),  # type: ignore[call-overload]
        "outbox_rows": int(outbox_rows),  # type: ignore[call-overload]
        "outbox_leased": int(leased),  # type: ignore[call-overload]
        "inbox": int(inbox),  # type: ignore[call-overload]
    }


def assert_clean(book: dict[str, int], expected: int) -> None:
    assert book["lost"] == 0, book
    assert book["unexpected"] == 0, book
    assert book["duplicates"] == 0, book
    assert book["effects"] == expected, book
    assert book["distinct"] == expected, book
    assert book["outbox_rows"] == 0, book
    assert book["outbox_leased"] == 0, book
    assert book["inbox"] == expected, book


def test_killing_the_relay_at_random_points_loses_and_duplicates_nothing(
    database: Path, script: Path, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    started = time.monotonic()
    outbox = SQLiteOutbox(database)
    bus = EventBus(registry=REGISTRY, outbox=outbox, relay=False)

    @bus.subscribe(name=HANDLER, delivery="durable")
    def apply(event: Numbered, connection: sqlite3.Connection) -> None:
        raise AssertionError("the test process never delivers")

    connection = outbox.connect()
    try:
        for first in range(0, EVENTS, 100):
            with bus.transaction(connection):
                for number in range(first, first + 100):
                    bus.publish(Numbered(number=number))
    finally:
        connection.close()
        bus.close()
        outbox.close()
    written = time.monotonic() - started
    assert query(database, "SELECT COUNT(*) FROM eventbus_outbox") == [(EVENTS,)]

    chance = random.Random()
    seed = chance.randrange(2**32)
    chance.seed(seed)
    stderr_log = tmp_path / "relay.stderr"
    progress: list[tuple[float, int, int]] = []  # (delay, effects so far, rows leased)
    for _ in range(KILLS):
        relay = spawn(children, [str(script), "relay", str(database)], stderr_log)
        wait_ready(relay, stderr_log)
        delay = chance.uniform(0.1, 0.6)
        time.sleep(delay)
        kill(relay)
        ((effects, leased),) = query(
            database,
            "SELECT (SELECT COUNT(*) FROM effects), "
            "(SELECT COUNT(lease_owner) FROM eventbus_outbox)",
        )
        progress.append((round(delay, 3), int(effects), int(leased)))  # type: ignore[call-overload]
    relay = spawn(children, [str(script), "relay", str(database)], stderr_log)
    wait_ready(relay, stderr_log)
    wait_for_empty_outbox(database, relay, timeout=60)
    kill(relay)
    elapsed = time.monotonic() - started

    book = ledger(database, EVENTS)
    killed_holding = sum(1 for _, _, leased in progress if leased)
    print(
        f"\nrelay crash ledger (seed {seed}): {book}\n"
        f"  kills: {KILLS}, kills with rows still leased: {killed_holding}, "
        f"effects after each kill: {[effects for _, effects, _ in progress]}\n"
        f"  writing {written:.1f}s, elapsed {elapsed:.1f}s"
    )
    relay_errors = stderr_log.read_text()
    assert_clean(book, EVENTS)
    # The kills landed mid-work: some with rows in flight, before the work was done.
    assert killed_holding > 0, progress
    assert progress[0][1] < EVENTS, progress
    assert "Traceback" not in relay_errors, relay_errors[-4000:]


def test_writers_and_a_relay_at_once_in_wal_mode_meet_no_busy_errors(
    database: Path, script: Path, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    started = time.monotonic()
    assert query(database, "PRAGMA journal_mode") == [("wal",)]
    go = tmp_path / "go"
    relay_log = tmp_path / "relay.stderr"
    relay = spawn(children, [str(script), "relay", str(database)], relay_log)
    wait_ready(relay, relay_log)
    writers: list[tuple[subprocess.Popen[str], Path]] = []
    for index in range(WRITERS):
        log = tmp_path / f"writer-{index}.stderr"
        args = [str(script), "writer", str(database), str(index), str(PER_WRITER), str(go)]
        writers.append((spawn(children, args, log), log))
    for writer, log in writers:
        wait_ready(writer, log)
    go.touch()

    reports: list[str] = []
    for writer, log in writers:
        assert writer.stdout is not None
        out = writer.stdout.read()
        returncode = writer.wait(90)
        errors = log.read_text()
        assert returncode == 0, errors[-4000:]
        assert errors == "", errors[-4000:]
        reports.append(out.strip())
    writing = time.monotonic() - started
    total = WRITERS * PER_WRITER
    assert query(database, "SELECT COUNT(*), COUNT(DISTINCT number) FROM orders") == [
        (total, total)
    ]
    wait_for_empty_outbox(database, relay, timeout=60)
    kill(relay)
    elapsed = time.monotonic() - started

    book = ledger(database, total)
    transactions = sum(int(report.split()[3]) for report in reports)
    print(
        f"\nWAL contention ledger: {book}\n"
        f"  writers: {WRITERS} x {PER_WRITER} events in {transactions} transactions, "
        f"writing {writing:.1f}s, elapsed {elapsed:.1f}s"
    )
    assert_clean(book, total)
    relay_errors = relay_log.read_text()
    assert "Traceback" not in relay_errors, relay_errors[-4000:]


OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    from eventbus.outbox import SQLiteOutbox

    path, go = sys.argv[1], Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    SQLiteOutbox(path).close()
    """
)


def test_processes_opening_a_fresh_database_at_once_all_succeed(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """Eight workers of one application start together on a database nobody made yet
    (a deploy): each one's SQLiteOutbox(path) must open it, none may see SQLITE_BUSY."""
    started = time.monotonic()
    script = tmp_path / "opener.py"
    script.write_text(OPENER)
    failures: list[str] = []
    trials = 10
    for trial in range(trials):
        path = tmp_path / f"fresh-{trial}.db"
        go = tmp_path / f"go-{trial}"
        log = tmp_path / f"opener-{trial}.stderr"
        openers = [spawn(children, [str(script), str(path), str(go)], log) for _ in range(8)]
        for opener in openers:
            wait_ready(opener, log)
        go.touch()
        codes = [opener.wait(60) for opener in openers]
        failures += [log.read_text()[-300:]] * sum(1 for code in codes if code != 0)
    elapsed = time.monotonic() - started
    print(f"\nfresh-database opens: {trials * 8}, failed: {len(failures)}, elapsed {elapsed:.1f}s")
    assert failures == [], failures[:2]


def test_three_relays_one_killed_again_and_again_keep_every_keys_order(
    database: Path, script: Path, tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    started = time.monotonic()
    outbox = SQLiteOutbox(database)
    bus = EventBus(registry=REGISTRY, outbox=outbox, relay=False)

    @bus.subscribe(name="fault.apply_keyed", delivery="durable")
    def apply_keyed(event: Keyed, connection: sqlite3.Connection) -> None:
        raise AssertionError("the test process never delivers")

    connection = outbox.connect()
    try:
        # Interleaved: seq 0 of every key, then seq 1 of every key, ...
        for seq in range(PER_KEY):
            with bus.transaction(connection):
                for index in range(KEYS):
                    key = f"k{index}"
                    bus.publish(Keyed(key=key, seq=seq), key=key)
    finally:
        connection.close()
        bus.close()
        outbox.close()
    stderr_log = tmp_path / "relays.stderr"
    relays = [spawn(children, [str(script), "keyed-relay", str(database)], stderr_log)]
    relays += [
        spawn(children, [str(script), "keyed-relay", str(database)], stderr_log)
        for _ in range(RELAYS - 1)
    ]
    for relay in relays:
        wait_ready(relay, stderr_log)
    chance = random.Random()
    for _ in range(RESTARTS):
        time.sleep(chance.uniform(0.05, 0.3))
        kill(relays[0])
        relays[0] = spawn(children, [str(script), "keyed-relay", str(database)], stderr_log)
        wait_ready(relays[0], stderr_log)
    wait_for_empty_outbox(database, relays[1], timeout=90)
    for relay in relays:
        kill(relay)

    rows = query(database, "SELECT key, seq, pid FROM keyed_effects ORDER BY rowid")
    by_key: dict[str, list[int]] = {}
    for key, seq, _pid in rows:
        by_key.setdefault(str(key), []).append(int(seq))  # type: ignore[call-overload]
    inversions = sum(1 for seqs in by_key.values() for a, b in itertools.pairwise(seqs) if b < a)
    expected = {(f"k{i}", seq) for i in range(KEYS) for seq in range(PER_KEY)}
    got = [(str(key), int(seq)) for key, seq, _ in rows]  # type: ignore[call-overload]
    pids = {pid for _, _, pid in rows}
    book = {
        "committed": len(expected),
        "effects": len(got),
        "lost": len(expected - set(got)),
        "duplicates": len(got) - len(set(got)),
        "inversions": inversions,
        "relays_that_delivered": len(pids),
        "outbox_rows": query(database, "SELECT COUNT(*) FROM eventbus_outbox")[0][0],
    }
    print(f"\nthree relays ledger: {book}, restarts {RESTARTS}, {time.monotonic() - started:.1f}s")
    assert book["lost"] == 0, book
    assert book["duplicates"] == 0, book
    assert book["inversions"] == 0, book
    assert book["outbox_rows"] == 0, book
    assert book["relays_that_delivered"] >= 2, book  # they really shared the work
    assert "Traceback" not in stderr_log.read_text()
