"""The SQLAlchemy outbox store on its own, on SQLite, PostgreSQL and MariaDB.

The same contract as ``SQLiteOutbox``: rows written in the caller's transaction appear at
its commit; claims come back oldest first, byte for byte; a lease keeps a row from every
other owner until it runs out; every change is fenced by the owner; per (destination,
key) a row waits for every earlier row of its key, whatever state that row is in; ids
never go back; the inbox records a (handler, envelope) once. On servers with concurrent
writers, also: racing claimers never share a row, and a row committed late by a slow
transaction (a smaller id than rows already relayed) is still claimed.
"""

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox, outbox_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from eventbus.errors import ConfigurationError, OutboxError
from eventbus.outbox import ClaimedRow, PendingRow, SQLiteOutbox
from eventbus.typing import OutboxStore

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


def claim(
    store: SQLAlchemyOutbox, owner: str = OWNER, *, batch: int = 100, lease: float = 30.0
) -> list[ClaimedRow]:
    return store.claim(owner=owner, batch=batch, lease=lease)


@pytest.fixture
def open_store(engine: sa.Engine, prefix: str) -> Iterator[Callable[..., SQLAlchemyOutbox]]:
    """Open stores on the test's tables (by default on ``engine``); closed at the end."""
    opened: list[SQLAlchemyOutbox] = []

    def make(on: sa.Engine | None = None, **options: Any) -> SQLAlchemyOutbox:
        options.setdefault("prefix", prefix)
        store = SQLAlchemyOutbox(on or engine, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., SQLAlchemyOutbox]) -> SQLAlchemyOutbox:
    return open_store()


@pytest.fixture
def orders(engine: sa.Engine, prefix: str, store: SQLAlchemyOutbox) -> sa.Table:
    """An application table beside the outbox."""
    table = sa.Table(
        f"{prefix}_orders", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True)
    )
    with engine.begin() as connection:
        table.create(connection)
    return table


def select_outbox(engine: sa.Engine, store: SQLAlchemyOutbox, *columns: str) -> list[Any]:
    table = store.outbox
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                sa.select(*(table.c[c] for c in columns)).order_by(table.c.id)
            )
        ]


# -- writing and claiming --------------------------------------------------------------


def test_rows_written_in_a_session_transaction_appear_at_its_commit(
    store: SQLAlchemyOutbox, engine: sa.Engine, orders: sa.Table, backend: Any
) -> None:
    written = [
        pending(1, key="order-1", name="order.placed", destination="billing.charge_card"),
        pending(2, key=None, name="order.cancelled", destination="mail.send_receipt"),
    ]
    before = time.time()
    with Session(engine) as session, session.begin():
        session.execute(sa.insert(orders).values(id=1))
        store.write(session, written)
        # Not committed: invisible to the relay's own connections.
        assert store.status().pending == 0
        if backend.concurrent_writers:  # on SQLite the open transaction holds the lock
            assert claim(store) == []
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
    assert all(type(row.id) is int and type(row.created_at) is float for row in claimed)
    assert claimed[0].id < claimed[1].id
    for row in claimed:
        assert before - 1.0 <= row.created_at <= after + 1.0
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 1


def test_rows_written_through_a_connection_commit_and_roll_back_with_it(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    with engine.connect() as connection:
        with connection.begin():
            store.write(connection, [pending(1)])
        transaction = connection.begin()
        store.write(connection, [pending(2), pending(3)])
        transaction.rollback()

    assert numbers(claim(store)) == [1]
    assert store.status().pending == 1


def test_rows_of_a_rolled_back_session_are_gone(store: SQLAlchemyOutbox, engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.begin()
        store.write(session, [pending(1), pending(2)])
        session.rollback()

    assert claim(store) == []
    assert store.status().pending == 0


def test_write_now_commits_on_its_own_and_payload_bytes_round_trip(
    store: SQLAlchemyOutbox,
) -> None:
    binary = bytes(range(256)) + b"\x00tail"
    envelope_id = uuid.uuid4()
    long_key = "k\u00e9y\U0001f600" + "x" * 1019  # 1024 characters, 4-byte ones too
    store.write_now([pending(payload=binary, envelope_id=envelope_id, key=long_key)])
    store.write_now([])

    (row,) = claim(store)

    assert row.payload == binary
    assert row.envelope_id == envelope_id
    assert row.key == long_key
    assert row.attempts == 0
    assert abs(row.created_at - time.time()) < 5.0


def test_a_large_write_is_one_ordered_batch(store: SQLAlchemyOutbox) -> None:
    """More rows (and bytes) than one INSERT carries: split, in order, all or nothing."""
    store.write_now([pending(n) for n in range(1200)] + [pending(1200, payload=b"x" * 3_000_000)])

    claimed = claim(store, batch=2000)

    assert len(claimed) == 1201
    assert numbers(claimed[:1200]) == list(range(1200))
    assert len(claimed[1200].payload) == 3_000_000


def test_claim_returns_the_oldest_rows_first_up_to_the_batch(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    store.write_now([pending(0), pending(1)])
    with Session(engine) as session, session.begin():
        store.write(session, [pending(2), pending(3)])
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
    store: SQLAlchemyOutbox,
) -> None:
    store.write_now([pending(1), pending(2)])
    held = claim(store, OWNER, lease=0.3)
    assert numbers(held) == [1, 2]

    assert claim(store, OTHER, lease=0.3) == []
    assert claim(store, OWNER, lease=0.3) == []  # not even by its owner
    assert store.status().in_flight == 2
    time.sleep(0.4)

    taken = claim(store, OTHER)
    assert [row.id for row in taken] == [row.id for row in held]
    # The first owner lost its lease: its late completion changes nothing.
    assert store.complete([row.id for row in held], owner=OWNER) == 0
    assert store.status().pending == 2
    assert store.complete([row.id for row in taken], owner=OTHER) == 2
    assert store.status().pending == 0


def test_racing_claimers_never_hold_the_same_row_and_together_get_all(
    store: SQLAlchemyOutbox,
    engine: sa.Engine,
    open_store: Callable[..., SQLAlchemyOutbox],
    make_engine: Callable[..., sa.Engine],
) -> None:
    """Three claimers on connections of their own, at once: each row is claimed once, and
    a keyed row only after every earlier row of its key was completed."""
    store.write_now([pending(n, key=None if n % 3 else f"k{n % 7}") for n in range(300)])
    earlier: dict[int, list[int]] = {}
    by_key: dict[str, list[int]] = {}
    for row_id, key in select_outbox(engine, store, "id", "key"):
        if key is not None:
            earlier[row_id] = list(by_key.setdefault(key, []))
            by_key[key].append(row_id)
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    completing: set[int] = set()  # recorded before the DELETE commits
    out_of_order: list[int] = []
    errors: list[BaseException] = []
    stores = {owner: open_store(make_engine(), create=False) for owner in claimed}
    start = threading.Barrier(len(claimed))

    def relay(owner: str) -> None:
        relay_store = stores[owner]  # an engine of its own: separate connections
        try:
            start.wait()
            idle = 0
            while idle < 3:
                rows = relay_store.claim(owner=owner, batch=7, lease=60.0)
                ids = [row.id for row in rows]
                claimed[owner].extend(ids)
                out_of_order.extend(i for i in ids if not completing.issuperset(earlier.get(i, ())))
                # Keys wait for their earlier rows: complete, so the key moves on.
                completing.update(ids)
                relay_store.complete(ids, owner=owner)
                idle = 0 if rows else idle + 1
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=relay, args=(owner,)) for owner in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    every = [row_id for ids in claimed.values() for row_id in ids]
    assert len(every) == 300
    assert len(set(every)) == 300
    assert out_of_order == []
    assert store.status().pending == 0


def test_complete_by_another_owner_deletes_nothing(store: SQLAlchemyOutbox) -> None:
    store.write_now([pending(1), pending(2)])
    ids = [row.id for row in claim(store, OWNER)]

    assert store.complete(ids, owner=OTHER) == 0
    assert store.status().pending == 2
    assert store.complete([], owner=OWNER) == 0
    assert store.complete([ids[0]], owner=OWNER) == 1
    assert store.complete([ids[0]], owner=OWNER) == 0  # already gone
    assert store.status().pending == 1


def test_reschedule_by_another_owner_changes_nothing(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)

    assert store.reschedule(row.id, owner=OTHER, attempts=1, delay=0.0, error="boom") is False
    assert select_outbox(engine, store, "attempts", "lease_owner", "last_error") == [
        (0, OWNER, None)
    ]
    assert claim(store, OTHER) == []  # still leased to OWNER


def test_reschedule_with_a_delay_keeps_the_row_invisible_until_it_is_due(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    before = time.time()

    assert store.reschedule(row.id, owner=OWNER, attempts=1, delay=0.4, error="x" * 5000) is True

    ((available_at, attempts, owner, error),) = select_outbox(
        engine, store, "available_at", "attempts", "lease_owner", "last_error"
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


def test_reschedule_without_a_delay_is_claimable_at_once(store: SQLAlchemyOutbox) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    assert store.reschedule(row.id, owner=OWNER, attempts=4, delay=0.0, error="e\u00e9") is True

    (again,) = claim(store, OTHER)
    assert (again.id, again.attempts) == (row.id, 4)


def test_renew_extends_a_lease_only_for_its_owner(store: SQLAlchemyOutbox) -> None:
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


def test_a_claim_never_leases_more_than_its_batch_whatever_the_plan(
    backend: Any,
    make_engine: Callable[..., sa.Engine],
    open_store: Callable[..., SQLAlchemyOutbox],
) -> None:
    """PostgreSQL may run ``UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP
    LOCKED)`` as a nested loop that runs the subquery again for every outer row: with
    these planner settings that form leased all 30 rows for a batch of 2. The claim's
    SELECT is a materialised CTE, run once."""
    if backend.name != "postgresql":
        pytest.skip("a PostgreSQL planner choice")
    engine = make_engine()

    @sa.event.listens_for(engine, "connect")
    def nested_loops_only(dbapi_connection: Any, record: Any) -> None:
        for setting in ("hashjoin", "mergejoin", "material", "hashagg", "sort"):
            dbapi_connection.execute(f"SET enable_{setting} = off")
        dbapi_connection.commit()

    store = open_store(engine)
    store.write_now([pending(n) for n in range(30)])

    assert numbers(claim(store, batch=2)) == [0, 1]
    assert store.status().in_flight == 2


# -- per-key order ---------------------------------------------------------------------


def test_a_later_row_of_a_key_waits_for_every_earlier_row_of_that_key(
    store: SQLAlchemyOutbox,
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
            pending(9, key="A", destination="d1"),  # keys are case-sensitive
        ]
    )

    first = claim(store, OWNER, lease=60.0)
    assert numbers(first) == [1, 3, 4, 5, 6, 9]
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


def test_rows_without_a_key_are_never_held_back(store: SQLAlchemyOutbox) -> None:
    store.write_now([pending(n, key=None) for n in range(3)])
    first, *_ = claim(store, OWNER, batch=1)
    assert store.reschedule(first.id, owner=OWNER, attempts=1, delay=60.0, error="e")

    assert numbers(claim(store, OTHER)) == [1, 2]


def test_a_key_moves_on_once_its_earlier_row_is_completed(store: SQLAlchemyOutbox) -> None:
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
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.lists(
        st.tuples(st.sampled_from(["d1", "d2"]), st.sampled_from([None, "a", "b", "c"])),
        min_size=1,
        max_size=20,
    ),
    actions=st.lists(st.sampled_from(["complete", "retry", "hold"]), min_size=1, max_size=30),
    batches=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=10),
)
def test_per_key_order_holds_whatever_the_relay_does(
    store: SQLAlchemyOutbox,
    rows: list[tuple[str, str | None]],
    actions: list[str],
    batches: list[int],
) -> None:
    """A model relay completes, retries at once or lets leases lapse, in any pattern:
    every row is completed once, and each (destination, key) in write order. Each example
    leaves the outbox empty, so they share one store."""
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
            if action == "complete" or step > 300:
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


# -- transactions that commit late -----------------------------------------------------


def test_a_row_committed_late_with_a_smaller_id_is_still_claimed(
    backend: Any, store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    if not backend.concurrent_writers:
        pytest.skip("one writer at a time: ids are handed out in commit order")
    with engine.connect() as slow:
        transaction = slow.begin()
        store.write(slow, [pending(1, key="slow")])  # takes the smaller id, stays open
        store.write_now([pending(2, key="fast"), pending(3)])

        fast = claim(store)
        assert numbers(fast) == [2, 3]
        assert store.complete([row.id for row in fast], owner=OWNER) == 2
        assert claim(store) == []
        transaction.commit()

    (late,) = claim(store)
    assert numbers([late]) == [1]
    assert late.id < min(row.id for row in fast)
    assert store.complete([late.id], owner=OWNER) == 1


def test_a_claim_does_not_wait_for_an_open_application_transaction(
    store: SQLAlchemyOutbox, engine: sa.Engine, backend: Any
) -> None:
    """Rows locked by a writer are skipped, never waited for (SKIP LOCKED)."""
    if not backend.skip_locked:
        pytest.skip("a SQLite writer holds the only write lock")
    store.write_now([pending(1)])
    with Session(engine) as session, session.begin():
        store.write(session, [pending(2)])
        (row,) = claim(store)  # would block on the open transaction without SKIP LOCKED
        assert numbers([row]) == [1]
        assert store.complete([row.id], owner=OWNER) == 1
    assert numbers(claim(store)) == [2]


# -- status ----------------------------------------------------------------------------


def test_status_counts_pending_in_flight_delayed_and_names(store: SQLAlchemyOutbox) -> None:
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
    assert all(type(v) is int for v in (status.pending, status.in_flight, status.delayed))
    assert status.oldest_age is not None
    assert 0.15 <= status.oldest_age < 10.0

    assert store.complete([held.id], owner=OWNER) == 1
    assert store.status().in_flight == 0
    assert store.status().pending == 3


# -- the inbox -------------------------------------------------------------------------


def test_mark_records_once_per_handler_and_envelope(store: SQLAlchemyOutbox) -> None:
    envelope_id = uuid.uuid4()
    assert store.seen("billing.charge_card", envelope_id) is False

    assert store.mark("billing.charge_card", envelope_id) is True
    assert store.seen("billing.charge_card", envelope_id) is True
    assert store.mark("billing.charge_card", envelope_id) is False
    # Keyed by (handler, envelope): another handler of the same event is not a duplicate.
    assert store.seen("mail.send_receipt", envelope_id) is False
    assert store.mark("mail.send_receipt", envelope_id) is True
    # Handler names are compared exactly (not case-insensitively, as MariaDB would).
    assert store.seen("Mail.Send_Receipt", envelope_id) is False
    assert store.mark("Mail.Send_Receipt", envelope_id) is True
    assert store.seen("billing.charge_card", uuid.uuid4()) is False


def test_mark_in_a_session_commits_and_rolls_back_with_it(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    rolled, committed = uuid.uuid4(), uuid.uuid4()
    with Session(engine) as session:
        session.begin()
        assert store.mark("h", rolled, session) is True
        assert store.mark("h", rolled, session) is False  # inside the same transaction too
        session.rollback()
    assert store.seen("h", rolled) is False

    with Session(engine) as session:
        session.begin()
        assert store.mark("h", committed, session) is True
        assert store.seen("h", committed) is False  # not before the commit
        session.commit()
    assert store.seen("h", committed) is True
    assert store.mark("h", rolled) is True  # the rolled-back mark left nothing behind

    with engine.connect() as connection, connection.begin():
        assert store.mark("h", committed, connection) is False
        assert store.mark("h", uuid.uuid4(), connection) is True


def test_complete_writes_the_inbox_marks_with_the_rows(store: SQLAlchemyOutbox) -> None:
    store.write_now([pending(1), pending(2)])
    first, second = claim(store)
    handled, other, before = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert store.mark("h", before) is True

    processed = [("h", handled), ("h", handled), ("g", other), ("h", before)]
    assert store.complete([first.id, second.id], owner=OWNER, processed=processed) == 2

    assert store.status().pending == 0
    asked = [("h", handled), ("g", other), ("h", before), ("h", other), ("g", handled)]
    assert store.seen_many(asked) == {("h", handled), ("g", other), ("h", before)}
    assert store.seen_many([]) == set()


def test_seen_many_reads_any_number_of_pairs(store: SQLAlchemyOutbox) -> None:
    store.write_now([pending(1)])
    (row,) = claim(store)
    pairs = [(f"handler-{n % 3}", uuid.uuid4()) for n in range(1200)]
    assert store.complete([row.id], owner=OWNER, processed=pairs) == 1

    unknown = [("handler-0", uuid.uuid4()) for _ in range(50)]
    assert store.seen_many(pairs + unknown) == set(pairs)


def test_handler_transaction_commits_on_a_clean_exit_and_rolls_back_on_error(
    store: SQLAlchemyOutbox,
) -> None:
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    with store.handler_transaction() as session:
        assert isinstance(session, Session)
        assert session.in_transaction()
        assert store.mark("h", kept, session) is True
    with pytest.raises(ZeroDivisionError), store.handler_transaction() as session:  # noqa: PT012
        assert store.mark("h", dropped, session) is True
        _ = 1 / 0
    assert store.seen("h", kept) is True
    assert store.seen("h", dropped) is False


# -- ids, tables, errors ---------------------------------------------------------------


def test_the_store_is_an_outbox_store(store: SQLAlchemyOutbox) -> None:
    assert isinstance(store, OutboxStore)
    assert (store.batch, store.lease, store.poll_interval) == (100, 30.0, 1.0)
    assert "***" not in repr(store)
    assert store.outbox.name in repr(store) or store.outbox.name[:-7] in repr(store)


def test_ids_are_never_reused_after_the_largest_is_deleted(
    open_store: Callable[..., SQLAlchemyOutbox], make_engine: Callable[..., sa.Engine]
) -> None:
    first = make_engine()
    store = open_store(first)
    store.write_now([pending(n) for n in range(3)])
    rows = claim(store)
    assert store.complete([row.id for row in rows], owner=OWNER) == 3
    assert store.status().pending == 0
    largest = max(row.id for row in rows)
    store.close()
    first.dispose()

    reopened = open_store(make_engine())
    reopened.write_now([pending(9)])
    (row,) = claim(reopened)
    assert row.id > largest


def test_tables_in_the_applications_metadata_for_migrations(
    engine: sa.Engine, prefix: str, open_store: Callable[..., SQLAlchemyOutbox]
) -> None:
    metadata = sa.MetaData()
    outbox, inbox = outbox_tables(metadata, prefix=prefix)
    assert outbox_tables(metadata, prefix=prefix) == (outbox, inbox)
    metadata.create_all(engine)  # what a migration does

    store = open_store(metadata=metadata, create=False)
    assert (store.outbox, store.inbox) == (outbox, inbox)
    store.write_now([pending(1, key="k")])
    assert numbers(claim(store)) == [1]
    assert store.mark("h", uuid.uuid4()) is True

    indexes = {index["name"] for index in sa.inspect(engine).get_indexes(outbox.name)}
    assert {f"{prefix}_outbox_available", f"{prefix}_outbox_key"} <= indexes


def test_schema_sql_creates_working_tables(
    store: SQLAlchemyOutbox, make_engine: Callable[..., sa.Engine], prefix: str
) -> None:
    migrated_prefix = f"{prefix}_m"  # dropped with the test's other tables
    ddl = store.schema_sql().replace(prefix, migrated_prefix)
    engine = make_engine()
    with engine.begin() as connection:
        for statement in ddl.split(";\n"):
            if statement.strip():
                connection.exec_driver_sql(statement)

    migrated = SQLAlchemyOutbox(engine, prefix=migrated_prefix, create=False)
    try:
        migrated.write_now([pending(1, key="k")])
        assert numbers(claim(migrated)) == [1]
        assert migrated.mark("h", uuid.uuid4()) is True
    finally:
        migrated.close()


def test_without_create_and_without_the_tables_work_fails_as_outbox_errors(
    open_store: Callable[..., SQLAlchemyOutbox],
) -> None:
    store = open_store(create=False)
    with pytest.raises(OutboxError, match="cannot write to the outbox"):
        store.write_now([pending(1)])
    with pytest.raises(OutboxError, match="cannot claim outbox rows"):
        claim(store)
    store.create_schema()
    store.write_now([pending(1)])
    assert numbers(claim(store)) == [1]


def test_a_closed_store_refuses_work(
    open_store: Callable[..., SQLAlchemyOutbox], engine: sa.Engine
) -> None:
    store = open_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        claim(store)
    with pytest.raises(OutboxError, match="closed"):
        store.write_now([pending(1)])
    with pytest.raises(OutboxError, match="closed"), store.handler_transaction():
        pass
    with engine.connect() as connection:  # the engine is the application's: still open
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1


def test_a_connection_in_autocommit_mode_is_refused(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    """Its rows would commit at once, whatever became of the application's transaction."""
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            store.write(autocommit, [pending(1)])
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            store.mark("h", uuid.uuid4(), autocommit)
    assert store.status().pending == 0


def test_a_session_of_an_autocommit_engine_is_refused(
    backend: Any, store: SQLAlchemyOutbox, make_engine: Callable[..., sa.Engine]
) -> None:
    if backend.name == "sqlite":
        pytest.skip("on SQLite the store itself turns the driver's autocommit flag off")
    autocommit = make_engine(isolation_level="AUTOCOMMIT")
    with Session(autocommit) as session:
        session.begin()
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            store.write(session, [pending(1)])
        session.rollback()
    assert store.status().pending == 0


def test_transaction_control_serves_sessions_and_connections_only(
    store: SQLAlchemyOutbox, engine: sa.Engine, tmp_path: Path
) -> None:
    with Session(engine) as session:
        control = store.transaction_control(session)
        assert control is not None
        assert control.in_transaction() is False
        control.begin()
        assert control.in_transaction() is True
        savepoint = control.savepoint()
        control.rollback_to(savepoint)
        control.rollback()
        assert control.in_transaction() is False
    with engine.connect() as connection:
        control = store.transaction_control(connection)
        assert control is not None
        control.begin()
        assert connection.in_transaction()
        control.release(control.savepoint())
        control.commit()
        assert not connection.in_transaction()
    raw = sqlite3.connect(tmp_path / "other.db")
    try:
        assert store.transaction_control(raw) is None
        assert store.transaction_control(object()) is None
        with pytest.raises(ConfigurationError, match="Session or a sqlalchemy"):
            store.write(raw, [pending(1)])
    finally:
        raw.close()


def test_a_session_on_another_kind_of_database_is_refused(
    store: SQLAlchemyOutbox, backend: Any, tmp_path: Path
) -> None:
    other_url = (
        f"sqlite:///{tmp_path / 'other.db'}"
        if backend.name != "sqlite"
        else "postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    other = sa.create_engine(other_url)
    try:
        with Session(other) as session:
            with pytest.raises(ConfigurationError, match="database"):
                store.transaction_control(session)
            with pytest.raises(ConfigurationError, match="database"):
                store.write(session, [pending(1)])
    finally:
        other.dispose()


# -- not per backend: settings and secrets ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://app:s3cr3t-pw@127.0.0.1:1/app",
        "mysql+pymysql://app:s3cr3t-pw@127.0.0.1:1/app",
    ],
)
def test_errors_name_the_operation_and_never_the_password(url: str) -> None:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with pytest.raises(OutboxError) as raised:
            SQLAlchemyOutbox(engine)
    finally:
        engine.dispose()
    message = str(raised.value)
    assert "cannot connect to the database" in message
    assert "app:***@127.0.0.1:1/app" in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    "options",
    [
        {"batch": 0},
        {"batch": 1.5},
        {"batch": True},
        {"lease": 0},
        {"lease": float("inf")},
        {"lease": float("nan")},
        {"poll_interval": -1},
        {"prefix": "1abc"},
        {"prefix": "bad-name"},
        {"prefix": "x" * 41},
    ],
    ids=repr,
)
def test_bad_settings_are_refused(tmp_path: Path, options: dict[str, Any]) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        with pytest.raises(ConfigurationError):
            SQLAlchemyOutbox(engine, **options)
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_memory_databases_are_refused(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with pytest.raises(ConfigurationError, match="memory"):
            SQLAlchemyOutbox(engine)
    finally:
        engine.dispose()


def test_a_busy_sqlite_database_leaves_the_session_as_it_was(tmp_path: Path) -> None:
    """bus.transaction() begins IMMEDIATE on SQLite: when another writer holds the lock
    past the busy timeout, the session is not left half-begun."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 0.1})
    store = SQLAlchemyOutbox(engine)
    blocker = sqlite3.connect(tmp_path / "app.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with Session(engine) as session:
            control = store.transaction_control(session)
            assert control is not None
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                control.begin()
            assert not session.in_transaction()
        with engine.connect() as connection:
            control = store.transaction_control(connection)
            assert control is not None
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                control.begin()
            assert not connection.in_transaction()
        blocker.execute("ROLLBACK")
        with Session(engine) as session:
            control = store.transaction_control(session)
            assert control is not None
            control.begin()
            store.write(session, [pending(1)])
            control.commit()
        assert numbers(claim(store)) == [1]
    finally:
        blocker.close()
        store.close()
        engine.dispose()


def test_the_tables_have_the_columns_of_the_sqlite_schema(tmp_path: Path) -> None:
    ours = tmp_path / "ours.db"
    theirs = tmp_path / "theirs.db"
    engine = sa.create_engine(f"sqlite:///{ours}")
    try:
        SQLAlchemyOutbox(engine).close()
    finally:
        engine.dispose()
    SQLiteOutbox(theirs).close()

    def shape(path: Path, table: str) -> list[tuple[object, ...]]:
        connection = sqlite3.connect(path)
        try:
            # name, not null (a primary key is), primary key position
            return [
                (row[1], bool(row[3] or row[5]), row[5])
                for row in connection.execute(f"PRAGMA table_info({table})")
            ]
        finally:
            connection.close()

    for table in ("eventbus_outbox", "eventbus_inbox"):
        assert shape(ours, table) == shape(theirs, table)
    connection = sqlite3.connect(ours)
    try:
        (sql,) = connection.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'eventbus_outbox'"
        ).fetchone()
        assert "AUTOINCREMENT" in sql
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
