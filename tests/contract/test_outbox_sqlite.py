"""What only the stdlib SQLite store has: a file, its pragmas, other processes.

The OutboxStore contract (writes, claims, leases, per-key order, the inbox) is tested
once for every store in test_outbox_contract.py; this file keeps what is about sqlite3
and a database file: paths that cannot be a database, sqlite3-only settings, WAL,
``BEGIN IMMEDIATE``, the published DDL, and a writer in another process.
"""

import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError, OutboxError
from eventbus.outbox import PendingRow, SQLiteOutbox

REPO = Path(__file__).resolve().parents[2]


def pending(payload: bytes = b"{}") -> PendingRow:
    return PendingRow(uuid.uuid4(), "order.placed", "billing.charge_card", None, payload)


def payloads(store: SQLiteOutbox) -> list[bytes]:
    """Claim what is due and return the payloads, in order."""
    return [row.payload for row in store.claim(owner="relay-a", batch=100, lease=30.0)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteOutbox]:
    with closing(SQLiteOutbox(path)) as opened:
        yield opened


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


# -- files and processes ---------------------------------------------------------------


def test_rows_written_by_one_process_are_claimed_by_another(
    store: SQLiteOutbox, path: Path
) -> None:
    envelope_id = uuid.uuid4()
    script = (
        "import sys, uuid\n"
        "from eventbus.outbox import PendingRow, SQLiteOutbox\n"
        "store = SQLiteOutbox(sys.argv[1])\n"
        "store.write_now([PendingRow(uuid.UUID(sys.argv[2]), 'order.placed', 'billing', "
        "'k', b'from-a-child')])\n"
        "store.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(envelope_id)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    (row,) = store.claim(owner="relay-a", batch=100, lease=30.0)
    assert (row.envelope_id, row.destination, row.key, row.payload) == (
        envelope_id,
        "billing",
        "k",
        b"from-a-child",
    )


def test_memory_databases_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="memory"):
        SQLiteOutbox(":memory:")


def test_a_directory_is_not_a_usable_path(tmp_path: Path) -> None:
    with pytest.raises(OutboxError):
        SQLiteOutbox(tmp_path)


def test_a_path_under_a_regular_file_is_not_usable(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("not a directory")
    with pytest.raises(OutboxError):
        SQLiteOutbox(regular / "app.db")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a SQLite database, only some text " * 20)
    with pytest.raises(OutboxError):
        SQLiteOutbox(garbage)


# -- sqlite3 settings and pragmas ------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"synchronous": "SOMETIMES"},
        {"synchronous": 2},
        {"timeout": -1},
        # The settings every store checks (test_outbox_contract.py), here for the file:
        {"batch": 0},
        {"lease": 0},
        {"poll_interval": 0},
    ],
    ids=repr,
)
def test_bad_settings_are_refused_before_the_file_is_made(
    path: Path, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(path, **options)  # type: ignore[arg-type]
    assert not path.exists()


@pytest.mark.parametrize("synchronous", ["off", "NORMAL", "full", "Extra"])
def test_every_synchronous_level_is_accepted(path: Path, synchronous: str) -> None:
    with closing(SQLiteOutbox(path, synchronous=synchronous)) as store:
        store.write_now([pending(b"1")])
        assert payloads(store) == [b"1"]


def test_the_store_puts_the_database_in_wal_mode(store: SQLiteOutbox, path: Path) -> None:
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]


def test_a_handler_transaction_holds_the_write_lock_from_its_start(
    store: SQLiteOutbox, path: Path
) -> None:
    """BEGIN IMMEDIATE: the lock is taken at BEGIN, so the handler's first write can
    never fail with SQLITE_BUSY half way; meanwhile other writers wait."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with store.handler_transaction() as connection:
            assert connection.in_transaction
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once the handler is done
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_schema_sql_is_what_the_store_creates(tmp_path: Path) -> None:
    """The DDL published for migrations is the store's own, to the letter (a migrated
    database working is tested in the contract)."""
    created = tmp_path / "created.db"
    migrated = tmp_path / "migrated.db"
    SQLiteOutbox(created).close()
    connection = sqlite3.connect(migrated)
    try:
        connection.executescript(SQLiteOutbox.schema_sql())
    finally:
        connection.close()

    query = (
        "SELECT type, name, tbl_name, sql FROM sqlite_master "
        "WHERE name LIKE 'eventbus_%' ORDER BY type, name"
    )
    schema = raw(created, query)
    assert schema == raw(migrated, query)
    assert {(kind, name) for kind, name, *_ in schema} >= {
        ("table", "eventbus_outbox"),
        ("table", "eventbus_inbox"),
    }


def test_a_store_that_refuses_its_tables_leaves_no_connection_open(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create=False on tables the store cannot use raises; the connection it opened to
    find out is closed, not left for the garbage collector (Python 3.13 warns then)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE eventbus_outbox (id INTEGER PRIMARY KEY)")
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)  # type: ignore[call-overload]
        opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", recording)
    with pytest.raises(OutboxError):
        SQLiteOutbox(path, create=False)
    assert opened
    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            connection.execute("SELECT 1")


# -- the claim and the inbox -----------------------------------------------------------


def test_the_claim_says_which_rows_the_inbox_holds(store: SQLiteOutbox) -> None:
    done, fresh = uuid.uuid4(), uuid.uuid4()
    store.write_now(
        [
            PendingRow(envelope_id=done, name="n", destination="h", key=None, payload=b"{}"),
            PendingRow(envelope_id=fresh, name="n", destination="h", key=None, payload=b"{}"),
            PendingRow(envelope_id=done, name="n", destination="g", key=None, payload=b"{}"),
        ]
    )
    assert store.mark("h", done)
    rows = store.claim(owner="me", batch=10, lease=5.0)
    assert [(row.destination, row.envelope_id, row.seen) for row in rows] == [
        ("h", done, True),
        ("h", fresh, False),
        ("g", done, False),  # the inbox is per handler: g has not seen it
    ]


def test_the_claim_looks_up_the_inbox_by_its_key_not_by_a_scan(path: Path) -> None:
    # Without the unary + in the claim's RETURNING, SQLite 3.40 scans the whole inbox for
    # every claimed row: the relay slows down as the inbox grows.
    from eventbus.outbox._sqlite import _CLAIM

    SQLiteOutbox(path).close()
    plan = raw(path, "EXPLAIN QUERY PLAN " + _CLAIM, {"owner": "me", "lease": 1.0, "batch": 10})  # type: ignore[arg-type]
    inbox = [detail for *_, detail in plan if " i " in f" {detail} "]
    assert inbox, plan
    assert all(str(detail).startswith("SEARCH i USING") for detail in inbox), inbox
