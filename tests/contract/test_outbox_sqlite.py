"""The SQLite outbox store on its own: writes, claims, leases, per-key order, the inbox.

Every test runs against a real database file under ``tmp_path``. The relay's contract is
what is asserted here: rows come back oldest first and byte for byte; a lease keeps a row
from every other owner until it runs out; every change is fenced by the owner; per
(destination, key) a row waits for every earlier row of its key, whatever state that row
is in; ids never go back.
"""

import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus.errors import ConfigurationError, OutboxError
from eventbus.outbox import ClaimedRow, PendingRow, SQLiteOutbox

REPO = Path(__file__).resolve().parents[2]
OWNER = "relay-a"
OTHER = "relay-b"


def pending(
    n: int = 0,
    *,
    destination: str = "billing.charge_card",
    key: str | None = None,
    name: str = "order.placed",
    envelope_id: uuid.UUID | None = None,
    payload: bytes | None = None,
) -> PendingRow:
    return PendingRow(
        envelope_id=envelope_id or uuid.uuid4(),
        name=name,
        destination=destination,
        key=key,
        payload=payload if payload is not None else f'{{"n":{n}}}'.encode(),
    )


def numbers(rows: list[ClaimedRow]) -> list[int]:
    """The ``n`` each test row carries in its payload (rows built by ``pending``)."""
    return [int(row.payload.decode().split(":")[1].rstrip("}")) for row in rows]


def claim(store: SQLiteOutbox, owner: str = OWNER, *, batch: int = 100, lease: float = 30.0):
    return store.claim(owner=owner, batch=batch, lease=lease)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


@pytest.fixture
def open_store(path: Path) -> Iterator[Callable[..., SQLiteOutbox]]:
    """Open stores on ``path`` (or another file); all are closed at the end."""
    opened: list[SQLiteOutbox] = []

    def make(at: Path | None = None, **options: object) -> SQLiteOutbox:
        store = SQLiteOutbox(at or path, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., SQLiteOutbox]) -> SQLiteOutbox:
    return open_store()


@pytest.fixture
def app(path: Path, store: SQLiteOutbox) -> Iterator[sqlite3.Connection]:
    """The application's own connection, managing its transactions explicitly."""
    connection = sqlite3.connect(path, isolation_level=None)
    store.configure(connection)
    yield connection
    connection.close()


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


# -- writing and claiming --------------------------------------------------------------


def test_rows_written_in_the_application_transaction_appear_at_its_commit(
    store: SQLiteOutbox, app: sqlite3.Connection, path: Path
) -> None:
    written = [
        pending(1, key="order-1", name="order.placed", destination="billing.charge_card"),
        pending(2, key=None, name="order.cancelled", destination="mail.send_receipt"),
    ]
    before = time.time()
    app.execute("BEGIN IMMEDIATE")
    app.execute("CREATE TABLE orders (id INTEGER)")
    app.execute("INSERT INTO orders VALUES (1)")
    store.write(app, written)
    # Not committed: invisible to every other connection (WAL readers see the last commit).
    assert store.status().pending == 0
    app.execute("COMMIT")
    after = time.time()

    claimed = claim(store)

    assert [row.envelope_id for row in claimed] == [row.envelope_id for row in written]
    assert all(isinstance(row.envelope_id, uuid.UUID) for row in claimed)
    assert [row.name for row in claimed] == ["order.placed", "order.cancelled"]
    assert [row.destination for row in claimed] == ["billing.charge_card", "mail.send_receipt"]
    assert [row.key for row in claimed] == ["order-1", None]
    assert [row.payload for row in claimed] == [b'{"n":1}', b'{"n":2}']
    assert all(type(row.payload) is bytes for row in claimed)
    assert [row.attempts for row in claimed] == [0, 0]
    assert claimed[0].id < claimed[1].id
    for row in claimed:
        assert before - 1.0 <= row.created_at <= after + 1.0
    assert raw(path, "SELECT COUNT(*) FROM orders") == [(1,)]


def test_rows_of_a_rolled_back_application_transaction_are_gone(
    store: SQLiteOutbox, app: sqlite3.Connection
) -> None:
    app.execute("BEGIN IMMEDIATE")
    store.write(app, [pending(1), pending(2)])
    app.execute("ROLLBACK")

    assert claim(store) == []
    assert store.status().pending == 0


def test_write_now_commits_on_its_own_and_payload_bytes_round_trip(store: SQLiteOutbox) -> None:
    binary = bytes(range(256)) + b"\x00tail"
    envelope_id = uuid.uuid4()
    store.write_now([pending(payload=binary, envelope_id=envelope_id, key="k\u00e9y")])

    (row,) = claim(store)

    assert row.payload == binary
    assert row.envelope_id == envelope_id
    assert row.key == "k\u00e9y"
    assert row.attempts == 0
    assert abs(row.created_at - time.time()) < 5.0


def test_claim_returns_the_oldest_rows_first_up_to_the_batch(
    store: SQLiteOutbox, app: sqlite3.Connection
) -> None:
    store.write_now([pending(0), pending(1)])
    app.execute("BEGIN IMMEDIATE")
    store.write(app, [pending(2), pending(3)])
    app.execute("COMMIT")
    store.write_now([pending(4)])

    first = claim(store, batch=2)
    second = claim(store, batch=2)
    third = claim(store, batch=2)

    assert numbers(first) == [0, 1]
    assert numbers(second) == [2, 3]
    assert numbers(third) == [4]
    ids = [row.id for row in first + second + third]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert claim(store, OTHER) == []


# -- leases and owners -----------------------------------------------------------------


def test_a_claimed_row_is_not_claimable_again_until_its_lease_runs_out(
    store: SQLiteOutbox,
) -> None:
    store.write_now([pending(1), pending(2)])
    held = claim(store, OWNER, lease=0.2)
    assert numbers(held) == [1, 2]

    assert claim(store, OTHER, lease=0.2) == []
    assert claim(store, OWNER, lease=0.2) == []  # not even by its owner
    assert store.status().in_flight == 2
    time.sleep(0.3)

    taken = claim(store, OTHER)
    assert [row.id for row in taken] == [row.id for row in held]
    # The first owner lost its lease: its late completion changes nothing.
    assert store.complete([row.id for row in held], owner=OWNER) == 0
    assert store.status().pending == 2
    assert store.complete([row.id for row in taken], owner=OTHER) == 2
    assert store.status().pending == 0


def test_two_owners_racing_never_hold_the_same_row(
    open_store: Callable[..., SQLiteOutbox],
) -> None:
    writer = open_store()
    writer.write_now([pending(n) for n in range(300)])
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    errors: list[BaseException] = []
    start = threading.Barrier(len(claimed))

    def relay(owner: str) -> None:
        store = open_store()  # a connection of its own, as another relay would have
        try:
            start.wait()
            while rows := store.claim(owner=owner, batch=7, lease=60.0):
                claimed[owner].extend(row.id for row in rows)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=relay, args=(owner,)) for owner in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    every = [row_id for ids in claimed.values() for row_id in ids]
    assert len(every) == 300
    assert len(set(every)) == 300
    for owner, ids in claimed.items():
        held = raw(
            writer.path,  # type: ignore[arg-type]
            "SELECT COUNT(*) FROM eventbus_outbox WHERE lease_owner = ?",
            (owner,),
        )
        assert held == [(len(ids),)]


def test_complete_by_another_owner_deletes_nothing(store: SQLiteOutbox) -> None:
    store.write_now([pending(1), pending(2)])
    ids = [row.id for row in claim(store, OWNER)]

    assert store.complete(ids, owner=OTHER) == 0
    assert store.status().pending == 2
    assert store.complete([], owner=OWNER) == 0
    assert store.complete([ids[0]], owner=OWNER) == 1
    assert store.complete([ids[0]], owner=OWNER) == 0  # already gone
    assert store.status().pending == 1


def test_reschedule_by_another_owner_changes_nothing(store: SQLiteOutbox, path: Path) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)

    assert store.reschedule(row.id, owner=OTHER, attempts=1, delay=0.0, error="boom") is False
    assert raw(
        path,
        "SELECT attempts, lease_owner, last_error FROM eventbus_outbox WHERE id = ?",
        (row.id,),
    ) == [(0, OWNER, None)]
    assert claim(store, OTHER) == []  # still leased to OWNER


def test_reschedule_with_a_delay_keeps_the_row_invisible_until_it_is_due(
    store: SQLiteOutbox, path: Path
) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    before = time.time()

    assert store.reschedule(row.id, owner=OWNER, attempts=1, delay=0.4, error="x" * 5000) is True

    ((available_at, attempts, owner, error),) = raw(
        path,
        "SELECT available_at, attempts, lease_owner, last_error FROM eventbus_outbox WHERE id = ?",
        (row.id,),
    )
    assert before + 0.3 <= available_at <= time.time() + 0.5
    assert attempts == 1
    assert owner is None
    assert error == "x" * 2000  # the error is kept, bounded
    assert claim(store, OWNER) == []
    assert claim(store, OTHER) == []
    assert store.status().delayed == 1
    time.sleep(0.5)

    (again,) = claim(store, OTHER)
    assert again.id == row.id
    assert again.attempts == 1
    assert again.payload == row.payload


def test_reschedule_without_a_delay_is_claimable_at_once(store: SQLiteOutbox) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    assert store.reschedule(row.id, owner=OWNER, attempts=4, delay=0.0, error="e") is True

    (again,) = claim(store, OTHER)
    assert (again.id, again.attempts) == (row.id, 4)


def test_renew_extends_a_lease_only_for_its_owner(store: SQLiteOutbox) -> None:
    store.write_now([pending(1), pending(2)])
    rows = claim(store, OWNER, lease=0.3)
    ids = [row.id for row in rows]

    assert store.renew(ids, owner=OTHER, lease=10.0) == 0
    assert store.renew([], owner=OWNER, lease=10.0) == 0
    assert store.renew([ids[0]], owner=OWNER, lease=10.0) == 1
    time.sleep(0.45)

    # The renewed row is still held; the other one's lease ran out.
    taken = claim(store, OTHER)
    assert [row.id for row in taken] == [ids[1]]
    assert store.complete([ids[0]], owner=OWNER) == 1


# -- per-key order ---------------------------------------------------------------------


def test_a_later_row_of_a_key_waits_for_every_earlier_row_of_that_key(
    store: SQLiteOutbox,
) -> None:
    store.write_now(
        [
            pending(1, key="a", destination="d1"),
            pending(2, key="a", destination="d1"),  # behind 1
            pending(3, key="b", destination="d1"),  # another key
            pending(4, key="a", destination="d2"),  # same key, another destination
            pending(5, key=None, destination="d1"),  # no key: never held back
            pending(6, key=None, destination="d1"),
            pending(7, key="a", destination="d1"),  # behind 1 and 2
            pending(8, key="b", destination="d1"),  # behind 3
        ]
    )

    # Pending: 2, 7 and 8 wait for the earlier rows of their key, even in one claim.
    first = claim(store, OWNER, lease=60.0)
    assert numbers(first) == [1, 3, 4, 5, 6]
    by_number = dict(zip(numbers(first), first, strict=True))

    # Leased: another owner gets nothing behind them.
    assert claim(store, OTHER) == []

    # Rescheduled into the future: the key still waits for row 1.
    assert store.reschedule(by_number[1].id, owner=OWNER, attempts=1, delay=0.4, error="e")
    assert store.complete([by_number[3].id, by_number[4].id], owner=OWNER) == 2
    assert numbers(claim(store, OTHER)) == [8]  # b moved on; a did not
    time.sleep(0.5)

    # Row 1 is due again; row 2 still waits for it, row 7 for both.
    (again,) = claim(store, OTHER)
    assert numbers([again]) == [1]
    assert again.attempts == 1
    assert claim(store, OWNER) == []
    assert store.complete([again.id], owner=OWNER) == 0  # fenced: OTHER holds it now
    assert store.complete([again.id], owner=OTHER) == 1
    (second,) = claim(store, OWNER)
    assert numbers([second]) == [2]
    assert store.complete([second.id], owner=OWNER) == 1
    assert numbers(claim(store, OWNER)) == [7]


def test_rows_without_a_key_are_never_held_back(store: SQLiteOutbox) -> None:
    store.write_now([pending(n, key=None) for n in range(3)])
    first, *_ = claim(store, OWNER, batch=1)
    assert store.reschedule(first.id, owner=OWNER, attempts=1, delay=60.0, error="e")

    assert numbers(claim(store, OTHER)) == [1, 2]


def test_a_key_moves_on_once_its_earlier_row_is_completed(store: SQLiteOutbox) -> None:
    store.write_now([pending(n, key="k") for n in range(4)])
    handled: list[int] = []
    for _ in range(4):
        rows = claim(store)
        assert len(rows) == 1
        handled += numbers(rows)
        assert store.complete([rows[0].id], owner=OWNER) == 1
    assert handled == [0, 1, 2, 3]
    assert claim(store) == []


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["d1", "d2"]), st.sampled_from([None, "a", "b", "c"])),
        min_size=1,
        max_size=30,
    ),
    actions=st.lists(st.sampled_from(["complete", "retry", "hold"]), min_size=1, max_size=50),
    batches=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=10),
)
def test_per_key_order_holds_whatever_the_relay_does(
    rows: list[tuple[str, str | None]], actions: list[str], batches: list[int]
) -> None:
    """A model relay completes, retries at once or lets leases lapse, in any pattern:
    every row is completed once, and each (destination, key) in write order."""
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteOutbox(Path(directory) / "app.db")
        try:
            store.write_now([pending(n, destination=d, key=k) for n, (d, k) in enumerate(rows)])
            done: list[int] = []
            step = 0
            while len(done) < len(rows):
                assert step < 2000, "the model relay made no progress"
                owner = f"relay-{step}"
                claimed = store.claim(owner=owner, batch=batches[step % len(batches)], lease=60)
                assert claimed, "due rows exist but nothing could be claimed"
                for row in claimed:
                    action = actions[step % len(actions)]
                    step += 1
                    if action == "complete" or step > 500:
                        assert store.complete([row.id], owner=owner) == 1
                        done += numbers([row])
                    elif action == "retry":
                        assert store.reschedule(
                            row.id, owner=owner, attempts=row.attempts + 1, delay=0, error="e"
                        )
                    else:  # the relay died holding it: the lease is taken back
                        store.renew([row.id], owner=owner, lease=-1.0)
            assert sorted(done) == list(range(len(rows)))
            for destination, key in set(rows):
                if key is None:
                    continue
                expected = [n for n, row in enumerate(rows) if row == (destination, key)]
                assert [n for n in done if rows[n] == (destination, key)] == expected
            assert store.status().pending == 0
        finally:
            store.close()


# -- status ----------------------------------------------------------------------------


def test_status_counts_pending_in_flight_delayed_and_names(store: SQLiteOutbox) -> None:
    empty = store.status()
    assert (empty.pending, empty.in_flight, empty.delayed) == (0, 0, 0)
    assert empty.oldest_age is None
    assert empty.by_name == {}

    store.write_now(
        [
            pending(1, name="order.placed"),
            pending(2, name="order.placed"),
            pending(3, name="order.cancelled"),
            pending(4, name="order.placed"),
        ]
    )
    time.sleep(0.2)
    held, retried, lapsed = claim(store, batch=3, lease=30.0)
    assert store.reschedule(retried.id, owner=OWNER, attempts=1, delay=60.0, error="e")
    store.renew([lapsed.id], owner=OWNER, lease=-1.0)  # its relay died: lease ran out

    status = store.status()
    assert status.pending == 4
    assert status.in_flight == 1
    assert status.delayed == 1
    assert status.by_name == {"order.cancelled": 1, "order.placed": 3}
    assert status.oldest_age is not None
    assert 0.15 <= status.oldest_age < 10.0

    assert store.complete([held.id], owner=OWNER) == 1
    assert store.status().in_flight == 0
    assert store.status().pending == 3


# -- the inbox -------------------------------------------------------------------------


def test_mark_records_once_per_handler_and_envelope(store: SQLiteOutbox) -> None:
    envelope_id = uuid.uuid4()
    assert store.seen("billing.charge_card", envelope_id) is False

    assert store.mark("billing.charge_card", envelope_id) is True
    assert store.seen("billing.charge_card", envelope_id) is True
    assert store.mark("billing.charge_card", envelope_id) is False
    # Keyed by (handler, envelope): another handler of the same event is not a duplicate.
    assert store.seen("mail.send_receipt", envelope_id) is False
    assert store.mark("mail.send_receipt", envelope_id) is True
    assert store.seen("billing.charge_card", uuid.uuid4()) is False


def test_mark_in_an_application_transaction_commits_and_rolls_back_with_it(
    store: SQLiteOutbox, app: sqlite3.Connection
) -> None:
    rolled, committed = uuid.uuid4(), uuid.uuid4()
    app.execute("BEGIN IMMEDIATE")
    assert store.mark("h", rolled, app) is True
    assert store.mark("h", rolled, app) is False  # inside the same transaction too
    app.execute("ROLLBACK")
    assert store.seen("h", rolled) is False

    app.execute("BEGIN IMMEDIATE")
    assert store.mark("h", committed, app) is True
    assert store.seen("h", committed) is False  # not before the commit
    app.execute("COMMIT")
    assert store.seen("h", committed) is True
    assert store.mark("h", rolled) is True  # the rolled-back mark left nothing behind


def test_complete_writes_the_inbox_marks_with_the_deletion(store: SQLiteOutbox) -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    store.write_now([pending(1, envelope_id=first), pending(2, envelope_id=second)])
    ids = [row.id for row in claim(store)]

    done = store.complete(ids, owner=OWNER, processed=[("h", first), ("h", second)])

    assert done == 2
    assert store.seen("h", first) is True
    assert store.seen("h", second) is True
    assert store.status().pending == 0


def test_seen_many_finds_exactly_the_marked_pairs_across_chunks(store: SQLiteOutbox) -> None:
    pairs = [(f"handler-{n % 3}", uuid.uuid4()) for n in range(1001)]
    marked = set(pairs[::2])
    for handler, envelope_id in marked:
        assert store.mark(handler, envelope_id) is True

    assert store.seen_many(pairs) == marked
    assert store.seen_many([]) == set()
    # The same envelope under another handler is not a match.
    handler, envelope_id = pairs[0]
    assert store.seen_many([("someone-else", envelope_id)]) == set()


def test_a_handler_transaction_commits_on_success_and_rolls_back_on_error(
    store: SQLiteOutbox, path: Path
) -> None:
    with store.handler_transaction() as connection:
        connection.execute("CREATE TABLE effects (n INTEGER)")
        connection.execute("INSERT INTO effects VALUES (1)")
        assert connection.in_transaction
    with pytest.raises(RuntimeError), store.handler_transaction() as connection:  # noqa: PT012
        connection.execute("INSERT INTO effects VALUES (2)")
        raise RuntimeError
    assert raw(path, "SELECT n FROM effects") == [(1,)]


# -- ids, files and processes ----------------------------------------------------------


def test_ids_are_never_reused_after_the_largest_is_deleted(
    open_store: Callable[..., SQLiteOutbox], path: Path
) -> None:
    store = open_store()
    store.write_now([pending(n) for n in range(3)])
    rows = claim(store)
    assert store.complete([row.id for row in rows], owner=OWNER) == 3
    assert raw(path, "SELECT COUNT(*) FROM eventbus_outbox") == [(0,)]
    largest = max(row.id for row in rows)
    store.close()

    reopened = open_store()
    reopened.write_now([pending(9)])
    (row,) = claim(reopened)
    assert row.id == largest + 1


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

    (row,) = claim(store)
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


def test_a_closed_store_refuses_work(open_store: Callable[..., SQLiteOutbox]) -> None:
    store = open_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        claim(store)
    with pytest.raises(OutboxError, match="closed"):
        store.write_now([pending(1)])


@pytest.mark.parametrize(
    "options",
    [
        {"batch": 0},
        {"batch": -3},
        {"batch": 1.5},
        {"batch": True},
        {"lease": 0},
        {"lease": -1.0},
        {"poll_interval": -1},
        {"poll_interval": 0},
        {"synchronous": "SOMETIMES"},
        {"timeout": -1},
    ],
    ids=repr,
)
def test_bad_settings_are_refused(path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(path, **options)  # type: ignore[arg-type]
    assert not path.exists()  # refused before anything touched the disk


@pytest.mark.parametrize("synchronous", ["off", "NORMAL", "full", "Extra"])
def test_every_synchronous_level_is_accepted(
    open_store: Callable[..., SQLiteOutbox], synchronous: str
) -> None:
    store = open_store(synchronous=synchronous)
    store.write_now([pending(1)])
    assert numbers(claim(store)) == [1]


def test_the_store_puts_the_database_in_wal_mode(store: SQLiteOutbox, path: Path) -> None:
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]


def test_schema_sql_creates_the_same_tables(
    tmp_path: Path, open_store: Callable[..., SQLiteOutbox]
) -> None:
    created = tmp_path / "created.db"
    migrated = tmp_path / "migrated.db"
    open_store(created)
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

    # A store opened without create= works on the migrated database.
    store = open_store(migrated, create=False)
    store.write_now([pending(1)])
    assert numbers(claim(store)) == [1]
    assert store.mark("h", uuid.uuid4()) is True


def test_without_create_and_without_the_schema_writes_fail_as_outbox_errors(
    tmp_path: Path, open_store: Callable[..., SQLiteOutbox]
) -> None:
    store = open_store(tmp_path / "empty.db", create=False)
    with pytest.raises(OutboxError):
        store.write_now([pending(1)])
    with pytest.raises(OutboxError):
        claim(store)
