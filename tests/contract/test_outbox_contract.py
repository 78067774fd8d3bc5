"""The OutboxStore contract, written once and run against every store.

Each test runs on the stdlib ``SQLiteOutbox``, on a store written by a third party on the
public surface alone (tests/third_party.py), on ``SQLAlchemyOutbox`` on SQLite,
PostgreSQL and MariaDB, and on ``DjangoOutbox`` on SQLite and PostgreSQL (the ``outbox``
fixture, tests/contract/conftest.py). What the
relay relies on: rows written in the caller's transaction appear at its commit and
vanish at its rollback; claims come back oldest first and byte for byte; a lease keeps a
row from every other owner until it runs out; every change is fenced by the owner; per
(destination, key) a row waits for every earlier row of its key, whatever state that row
is in; ids never go back; a row committed late is never skipped; the inbox records a
(handler, envelope) once, in the handler's transaction. Where databases differ, tests
switch on the backend's declared capabilities. What only one store has (DDL, sqlite3
pragmas, SQLAlchemy sessions and connections, PostgreSQL specifics) is tested in
test_outbox_sqlite.py and test_outbox_sqlalchemy.py.
"""

import math
import threading
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus.errors import ConfigurationError, OutboxError
from eventbus.outbox import ClaimedRow, PendingRow
from eventbus.typing import OutboxStore

OWNER = "relay-a"
OTHER = "relay-b"

# The harness (tests/contract/conftest.py); Any, as the fixture is not importable here.
Outbox = Any

# Every store: the stdlib one (sqlite3), a third party's written on the public surface
# alone (tests/third_party.py), and SQLAlchemy's on each database. Indirect, so
# tests/conftest.py still probes the servers and skips those that are down.
pytestmark = pytest.mark.parametrize(
    "backend",
    [
        "sqlite3",
        "third-party",
        "sqlite",
        "postgresql",
        "mariadb",
        "django-sqlite",
        "django-postgresql",
    ],
    indirect=True,
)


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
    store: OutboxStore, owner: str = OWNER, *, batch: int = 100, lease: float = 30.0
) -> list[ClaimedRow]:
    return store.claim(owner=owner, batch=batch, lease=lease)


# -- writing in the caller's transaction -------------------------------------------------


def test_rows_written_in_the_application_transaction_appear_at_its_commit(
    outbox: Outbox,
) -> None:
    store = outbox.store
    outbox.create_orders()
    written = [
        pending(1, key="order-1", name="order.placed", destination="billing.charge_card"),
        pending(2, key=None, name="order.cancelled", destination="mail.send_receipt"),
    ]
    before = time.time()
    transaction = outbox.begin()
    outbox.insert_order(transaction.resource, 1)
    store.write(transaction.resource, written)
    # Not committed: invisible to the relay's own connections.
    assert store.status().pending == 0
    if outbox.backend.concurrent_writers:  # on SQLite the open transaction holds the lock
        assert claim(store) == []
    transaction.commit()
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
    assert outbox.orders() == [1]


def test_rows_of_a_rolled_back_application_transaction_are_gone(outbox: Outbox) -> None:
    store = outbox.store
    transaction = outbox.begin()
    store.write(transaction.resource, [pending(1), pending(2)])
    transaction.rollback()

    assert claim(store) == []
    assert store.status().pending == 0


def test_write_now_commits_on_its_own_and_payload_bytes_round_trip(outbox: Outbox) -> None:
    store = outbox.store
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


def test_a_large_write_is_one_ordered_batch(outbox: Outbox) -> None:
    """More rows (and bytes) than one INSERT carries: split, in order, all or nothing."""
    store = outbox.store
    store.write_now([pending(n) for n in range(1200)] + [pending(1200, payload=b"x" * 3_000_000)])

    claimed = claim(store, batch=2000)

    assert len(claimed) == 1201
    assert numbers(claimed[:1200]) == list(range(1200))
    assert len(claimed[1200].payload) == 3_000_000


def test_claim_returns_the_oldest_rows_first_up_to_the_batch(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(0), pending(1)])
    transaction = outbox.begin()
    store.write(transaction.resource, [pending(2), pending(3)])
    transaction.commit()
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


def test_a_claimed_row_is_not_claimable_again_until_its_lease_runs_out(outbox: Outbox) -> None:
    store = outbox.store
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


def _race(stores: dict[str, OutboxStore], relay: Any) -> None:
    """Run ``relay(owner, store)`` for every owner at once, each on its own thread."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def run(owner: str) -> None:
        try:
            start.wait()
            relay(owner, stores[owner])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []


def test_racing_claimers_never_hold_the_same_row(outbox: Outbox) -> None:
    """Three relays on connections of their own claim at once, and never complete: each
    row is leased once, to the relay that got it back."""
    outbox.store.write_now([pending(n) for n in range(300)])
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def relay(owner: str, store: OutboxStore) -> None:
        while rows := store.claim(owner=owner, batch=7, lease=60.0):
            claimed[owner].extend(row.id for row in rows)

    _race({owner: outbox.open(create=False) for owner in claimed}, relay)

    every = [row_id for ids in claimed.values() for row_id in ids]
    assert len(every) == 300
    assert len(set(every)) == 300
    owners = dict(outbox.outbox_rows("id", "lease_owner"))
    for owner, ids in claimed.items():
        assert {owners[row_id] for row_id in ids} <= {owner}


def test_racing_claimers_that_complete_keep_each_key_in_order(outbox: Outbox) -> None:
    """Three relays at once, completing what they claim: each row is claimed once, and a
    keyed row only after every earlier row of its key was completed."""
    store = outbox.store
    store.write_now([pending(n, key=None if n % 3 else f"k{n % 7}") for n in range(300)])
    earlier: dict[int, list[int]] = {}
    by_key: dict[str, list[int]] = {}
    for row_id, key in outbox.outbox_rows("id", "key"):
        if key is not None:
            earlier[row_id] = list(by_key.setdefault(key, []))
            by_key[key].append(row_id)
    claimed: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    completing: set[int] = set()  # recorded before the DELETE commits
    out_of_order: list[int] = []

    def relay(owner: str, relay_store: OutboxStore) -> None:
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

    _race({owner: outbox.open(create=False) for owner in claimed}, relay)

    every = [row_id for ids in claimed.values() for row_id in ids]
    assert len(every) == 300
    assert len(set(every)) == 300
    assert out_of_order == []
    assert store.status().pending == 0


def test_complete_by_another_owner_deletes_nothing(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1), pending(2)])
    ids = [row.id for row in claim(store, OWNER)]

    assert store.complete(ids, owner=OTHER) == 0
    assert store.status().pending == 2
    assert store.complete([], owner=OWNER) == 0
    assert store.complete([ids[0]], owner=OWNER) == 1
    assert store.complete([ids[0]], owner=OWNER) == 0  # already gone
    assert store.status().pending == 1


def test_reschedule_by_another_owner_changes_nothing(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)

    assert store.reschedule(row.id, owner=OTHER, attempts=1, delay=0.0, error="boom") is False
    assert outbox.outbox_rows("attempts", "lease_owner", "last_error") == [(0, OWNER, None)]
    assert claim(store, OTHER) == []  # still leased to OWNER


def test_reschedule_with_a_delay_keeps_the_row_invisible_until_it_is_due(
    outbox: Outbox,
) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    before = time.time()

    assert store.reschedule(row.id, owner=OWNER, attempts=1, delay=0.4, error="x" * 5000) is True

    ((available_at, attempts, owner, error),) = outbox.outbox_rows(
        "available_at", "attempts", "lease_owner", "last_error"
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


def test_reschedule_without_a_delay_is_claimable_at_once(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    assert store.reschedule(row.id, owner=OWNER, attempts=4, delay=0.0, error="e\u00e9") is True

    (again,) = claim(store, OTHER)
    assert (again.id, again.attempts) == (row.id, 4)
    assert outbox.outbox_rows("last_error") == [("e\u00e9",)]


def test_the_first_reschedule_stamps_the_first_failure_and_later_ones_keep_it(
    outbox: Outbox,
) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store)
    assert row.first_failed_at is None  # it has not failed yet

    assert store.reschedule(row.id, owner=OWNER, attempts=1, delay=0.0, error="first")
    (again,) = claim(store, OTHER)
    first = again.first_failed_at
    assert first is not None
    assert abs(first - time.time()) < 600  # unix seconds, from the database clock
    time.sleep(0.05)
    assert store.reschedule(again.id, owner=OTHER, attempts=2, delay=0.0, error="second")

    (third,) = claim(store, OWNER)
    assert third.attempts == 2
    assert third.first_failed_at == first  # kept, not the latest failure's time
    assert outbox.outbox_rows("first_failed_at", "last_error") == [(first, "second")]


def test_a_table_of_an_earlier_release_gets_its_new_column_when_the_store_creates(
    outbox: Outbox,
) -> None:
    old = outbox.open_earlier_release(create=True)  # adds first_failed_at

    (row,) = claim(old)  # the row the earlier release wrote is still there
    assert (numbers([row]), row.first_failed_at) == ([0], None)
    assert old.reschedule(row.id, owner=OWNER, attempts=1, delay=0.0, error="boom")
    (again,) = claim(old)
    assert again.first_failed_at is not None
    outbox.open_earlier_release(create=True)  # the column is there now: nothing to do


def test_a_table_of_an_earlier_release_is_refused_without_create_with_the_migration(
    outbox: Outbox,
) -> None:
    with pytest.raises(OutboxError, match="first_failed_at") as refused:
        outbox.open_earlier_release(create=False)
    text = str(refused.value)
    assert "ALTER TABLE" in text
    assert "ADD COLUMN first_failed_at" in text
    assert "create=True" in text


def test_renew_extends_a_lease_only_for_its_owner(outbox: Outbox) -> None:
    store = outbox.store
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


def test_a_later_row_of_a_key_waits_for_every_earlier_row_of_that_key(outbox: Outbox) -> None:
    store = outbox.store
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

    # Pending: 2, 7 and 8 wait for the earlier rows of their key, even in one claim.
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


def test_rows_without_a_key_are_never_held_back(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(n, key=None) for n in range(3)])
    first, *_ = claim(store, OWNER, batch=1)
    assert store.reschedule(first.id, owner=OWNER, attempts=1, delay=60.0, error="e")

    assert numbers(claim(store, OTHER)) == [1, 2]


def test_a_key_moves_on_once_its_earlier_row_is_completed(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(n, key="k") for n in range(4)])
    handled: list[int] = []
    for _ in range(4):
        rows = claim(store)
        assert len(rows) == 1
        handled += numbers(rows)
        assert store.complete([rows[0].id], owner=OWNER) == 1
    assert handled == [0, 1, 2, 3]
    assert claim(store) == []


def test_per_key_order_holds_whatever_the_relay_does(outbox: Outbox) -> None:
    """A model relay completes, retries at once or lets leases lapse, in any pattern:
    every row is completed once, and each (destination, key) in write order. Each example
    leaves the outbox empty, so they share one store."""
    store = outbox.store

    @settings(
        max_examples=outbox.model_examples,
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
    def model(rows: list[tuple[str, str | None]], actions: list[str], batches: list[int]) -> None:
        assert store.status().pending == 0, "an earlier example left rows behind"
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

    model()


# -- transactions that commit late -----------------------------------------------------


def test_a_row_committed_late_with_a_smaller_id_is_still_claimed(outbox: Outbox) -> None:
    """Where writers run at once, ids are not handed out in commit order: the relay must
    not skip the row of a slow transaction (no "highest id seen" watermark)."""
    if not outbox.backend.concurrent_writers:
        pytest.skip("one writer at a time: ids are handed out in commit order")
    store = outbox.store
    slow = outbox.begin()
    store.write(slow.resource, [pending(1, key="slow")])  # takes the smaller id, stays open
    store.write_now([pending(2, key="fast"), pending(3)])

    fast = claim(store)
    assert numbers(fast) == [2, 3]
    assert store.complete([row.id for row in fast], owner=OWNER) == 2
    assert claim(store) == []
    slow.commit()

    (late,) = claim(store)
    assert numbers([late]) == [1]
    assert late.id < min(row.id for row in fast)
    assert store.complete([late.id], owner=OWNER) == 1


def test_a_claim_does_not_wait_for_an_open_application_transaction(outbox: Outbox) -> None:
    """Rows locked by a writer are skipped, never waited for (SKIP LOCKED)."""
    if not outbox.backend.skip_locked:
        pytest.skip("a SQLite writer holds the only write lock")
    store = outbox.store
    store.write_now([pending(1)])
    transaction = outbox.begin()
    store.write(transaction.resource, [pending(2)])
    (row,) = claim(store)  # would block on the open transaction without SKIP LOCKED
    assert numbers([row]) == [1]
    assert store.complete([row.id], owner=OWNER) == 1
    transaction.commit()
    assert numbers(claim(store)) == [2]


# -- status ----------------------------------------------------------------------------


def test_status_counts_pending_in_flight_delayed_and_names(outbox: Outbox) -> None:
    store = outbox.store
    empty = store.status()
    assert (empty.pending, empty.in_flight, empty.delayed) == (0, 0, 0)
    assert empty.oldest_age is None
    assert empty.by_name == {}

    store.write_now([pending(1, name="order.placed")])
    time.sleep(0.2)  # the oldest row's age, not the newest's
    store.write_now(
        [
            pending(2, name="order.placed"),
            pending(3, name="order.cancelled"),
            pending(4, name="order.placed"),
        ]
    )
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


def test_mark_records_once_per_handler_and_envelope(outbox: Outbox) -> None:
    store = outbox.store
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


def test_mark_in_an_application_transaction_commits_and_rolls_back_with_it(
    outbox: Outbox,
) -> None:
    store = outbox.store
    rolled, committed = uuid.uuid4(), uuid.uuid4()
    transaction = outbox.begin()
    assert store.mark("h", rolled, transaction.resource) is True
    assert store.mark("h", rolled, transaction.resource) is False  # in the same transaction too
    transaction.rollback()
    assert store.seen("h", rolled) is False

    transaction = outbox.begin()
    assert store.mark("h", committed, transaction.resource) is True
    assert store.seen("h", committed) is False  # not before the commit
    transaction.commit()
    assert store.seen("h", committed) is True
    assert store.mark("h", rolled) is True  # the rolled-back mark left nothing behind


def test_complete_writes_the_inbox_marks_with_the_rows(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1), pending(2)])
    first, second = claim(store)
    handled, other, before = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert store.mark("h", before) is True

    # A pair twice, and one marked before: neither makes the completion fail.
    processed = [("h", handled), ("h", handled), ("g", other), ("h", before)]
    assert store.complete([first.id, second.id], owner=OWNER, processed=processed) == 2

    assert store.status().pending == 0
    assert store.seen("h", handled) is True
    assert store.seen("g", other) is True
    asked = [("h", handled), ("g", other), ("h", before), ("h", other), ("g", handled)]
    assert store.seen_many(asked) == {("h", handled), ("g", other), ("h", before)}
    assert store.seen_many([]) == set()


def test_a_fenced_out_completion_still_records_the_handlers_that_ran(outbox: Outbox) -> None:
    """A relay whose lease ran out keeps its row (fenced), but its handlers did run: their
    marks are kept, so the relay that takes the row over skips them (effectively once)."""
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store, OWNER)
    envelope_id = uuid.uuid4()

    assert store.complete([row.id], owner=OTHER, processed=[("h", envelope_id)]) == 0

    assert store.seen("h", envelope_id) is True
    assert store.status().pending == 1


def test_seen_many_finds_exactly_the_marked_pairs_across_chunks(outbox: Outbox) -> None:
    store = outbox.store
    pairs = [(f"handler-{n % 3}", uuid.uuid4()) for n in range(1001)]
    marked = set(pairs[::2])
    for handler, envelope_id in marked:
        assert store.mark(handler, envelope_id) is True

    assert store.seen_many(pairs) == marked
    # The same envelope under another handler is not a match.
    _, envelope_id = pairs[0]
    assert store.seen_many([("someone-else", envelope_id)]) == set()


def test_seen_many_reads_any_number_of_pairs_marked_by_complete(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    (row,) = claim(store)
    pairs = [(f"handler-{n % 3}", uuid.uuid4()) for n in range(1200)]
    assert store.complete([row.id], owner=OWNER, processed=pairs) == 1

    unknown = [("handler-0", uuid.uuid4()) for _ in range(50)]
    assert store.seen_many(pairs + unknown) == set(pairs)


def test_a_handler_transaction_commits_on_a_clean_exit_and_rolls_back_on_error(
    outbox: Outbox,
) -> None:
    """The handler's own writes and its inbox mark commit, or roll back, together."""
    store = outbox.store
    outbox.create_orders()
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    with store.handler_transaction() as resource:
        assert isinstance(resource, store.resource_type)
        outbox.insert_order(resource, 1)
        assert store.mark("h", kept, resource) is True
    with pytest.raises(ZeroDivisionError), store.handler_transaction() as resource:  # noqa: PT012
        outbox.insert_order(resource, 2)
        assert store.mark("h", dropped, resource) is True
        _ = 1 / 0
    assert outbox.orders() == [1]
    assert store.seen("h", kept) is True
    assert store.seen("h", dropped) is False


# -- ids, schema, settings, closing ----------------------------------------------------


def test_the_store_is_an_outbox_store_with_the_default_settings(outbox: Outbox) -> None:
    store = outbox.store
    assert isinstance(store, OutboxStore)
    assert (store.batch, store.lease, store.poll_interval) == (100, 30.0, 1.0)
    assert isinstance(store.resource_type, type)


def test_ids_are_never_reused_after_the_largest_is_deleted(outbox: Outbox) -> None:
    store = outbox.open()
    store.write_now([pending(n) for n in range(3)])
    rows = claim(store)
    assert store.complete([row.id for row in rows], owner=OWNER) == 3
    assert outbox.outbox_rows("id") == []
    largest = max(row.id for row in rows)
    store.close()

    reopened = outbox.open()
    reopened.write_now([pending(9)])
    (row,) = claim(reopened)
    assert row.id > largest
    if not outbox.backend.concurrent_writers:
        # One writer at a time (AUTOINCREMENT): the next id follows the largest ever used.
        assert row.id == largest + 1


def test_creating_the_schema_again_keeps_what_is_there(outbox: Outbox) -> None:
    store = outbox.store
    store.write_now([pending(1)])
    envelope_id = uuid.uuid4()
    assert store.mark("h", envelope_id) is True

    again = outbox.open()  # create=True on tables that exist
    again.create_schema()

    assert numbers(claim(again)) == [1]
    assert again.seen("h", envelope_id) is True


def test_schema_sql_creates_working_tables(outbox: Outbox) -> None:
    """The published DDL, run by a migration; then a store that creates nothing."""
    migrated = outbox.open_elsewhere(schema_sql=True)

    migrated.write_now([pending(1, key="k")])
    assert numbers(claim(migrated)) == [1]
    assert migrated.mark("h", uuid.uuid4()) is True


def test_without_create_and_without_the_tables_work_fails_as_outbox_errors(
    outbox: Outbox,
) -> None:
    store = outbox.open_elsewhere(schema_sql=False)
    with pytest.raises(OutboxError, match="cannot write to the outbox"):
        store.write_now([pending(1)])
    with pytest.raises(OutboxError, match="cannot claim outbox rows"):
        claim(store)
    store.create_schema()
    store.write_now([pending(1)])
    assert numbers(claim(store)) == [1]


@pytest.mark.parametrize(
    "options",
    [
        {"batch": 0},
        {"batch": -3},
        {"batch": 1.5},
        {"batch": True},
        {"lease": 0},
        {"lease": -1.0},
        {"lease": math.inf},
        {"lease": math.nan},
        {"poll_interval": -1},
        {"poll_interval": 0},
    ],
    ids=repr,
)
def test_bad_settings_are_refused(outbox: Outbox, options: dict[str, object]) -> None:
    name = next(iter(options))
    with pytest.raises(ConfigurationError, match=name):
        outbox.open(**options)


def test_a_closed_store_refuses_work(outbox: Outbox) -> None:
    store = outbox.open()
    store.write_now([pending(1)])
    store.close()
    store.close()  # idempotent
    with pytest.raises(OutboxError, match="closed"):
        claim(store)
    with pytest.raises(OutboxError, match="closed"):
        store.write_now([pending(1)])
    with pytest.raises(OutboxError, match="closed"):
        store.status()
    with pytest.raises(OutboxError, match="closed"):
        store.mark("h", uuid.uuid4())
    with pytest.raises(OutboxError, match="closed"):
        store.seen("h", uuid.uuid4())
    # The rows stay for the next store.
    assert numbers(claim(outbox.open())) == [1]


def test_a_closed_store_refuses_a_handler_transaction(
    outbox: Outbox, request: pytest.FixtureRequest
) -> None:
    outbox.expect_bug(request, "closed handler_transaction")
    store = outbox.open()
    store.close()
    with pytest.raises(OutboxError, match="closed"), store.handler_transaction():
        pass
