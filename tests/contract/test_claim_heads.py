"""The claim finds each key's head directly, and may take runs of one key: on every store.

A claim reads a window of the oldest rows and, when that gives a short batch, finds the
remaining keys' heads with a loose index scan from where the previous scan stopped
(eventbus/outbox/_claims.py, eventbus_contrib/_claims.py). Whatever path a claim takes,
it keeps the claim invariant: no row while an earlier row of its (destination, key) is
left in any state (pending, leased, delayed). These tests hold it to that under hot keys,
many keys, delayed and leased heads, and random interleavings of writes, claims,
completions and reschedules against a model; and check that with ``per_key`` a claim
takes consecutive rows of one key from its head, never past one that is left.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus.errors import ConfigurationError
from eventbus.outbox import ClaimedRow, PendingRow
from eventbus.typing import OutboxStore, SupportsClaimRuns, SupportsClear

OWNER = "relay-a"
OTHER = "relay-b"

Outbox = Any  # the harness of tests/contract/conftest.py

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


def pending(n: int, *, key: str | None, destination: str = "d1") -> PendingRow:
    return PendingRow(
        envelope_id=uuid.uuid4(),
        name="order.placed",
        destination=destination,
        key=key,
        payload=f'{{"n":{n}}}'.encode(),
    )


def numbers(rows: list[ClaimedRow]) -> list[int]:
    return [int(row.payload.decode().split(":")[1].rstrip("}")) for row in rows]


def runs_store(outbox: Outbox) -> SupportsClaimRuns:
    store = outbox.store
    if not isinstance(store, SupportsClaimRuns):
        pytest.skip("this store claims one row per key (no SupportsClaimRuns)")
    return store


def drain_claims(store: OutboxStore, owner: str, *, batch: int) -> list[int]:
    """Claim (holding every lease) until a claim comes back empty; the numbers taken."""
    taken: list[int] = []
    for _ in range(200):
        rows = store.claim(owner=owner, batch=batch, lease=60.0)
        if not rows:
            return taken
        taken += numbers(rows)
    raise AssertionError("claims never ran dry")


# -- one row per key ---------------------------------------------------------------------


def test_a_hot_key_holds_back_neither_other_keys_nor_rows_without_a_key(outbox: Outbox) -> None:
    """The oldest 60 rows are one key's: a window of them finds one head. The claims
    still reach every other key's head and every row without a key, in a few small
    batches, and never a second row of any key."""
    store = outbox.store
    rows = [pending(n, key="hot") for n in range(60)]
    rows += [pending(60 + n, key=f"k{n % 12}", destination=f"d{n % 2}") for n in range(36)]
    rows += [pending(96 + n, key=None, destination=f"d{n % 3}") for n in range(5)]
    store.write_now(rows)

    taken = drain_claims(store, OWNER, batch=3)

    heads = [0, *range(60, 72), *range(96, 101)]
    assert sorted(taken) == heads
    assert len(taken) == len(set(taken))


def test_delayed_and_leased_heads_hold_their_keys_back_in_the_heads_scan(
    outbox: Outbox,
) -> None:
    """Keys whose head is delayed (rescheduled) or leased by another relay yield
    nothing, while the window is full of one hot key, so every head is found by the
    heads scan; the other keys' heads are claimed."""
    store = outbox.store
    rows = [pending(n, key="hot") for n in range(40)]
    rows += [pending(40 + n, key=f"k{n % 8}") for n in range(24)]  # heads 40..47
    store.write_now(rows)
    held = store.claim(owner=OTHER, batch=100, lease=60.0)
    by_number = dict(zip(numbers(held), held, strict=True))
    assert sorted(by_number) == [0, *range(40, 48)]
    for n in (41, 43):  # delayed: back in the outbox, due in an hour
        assert store.reschedule(by_number[n].id, owner=OTHER, attempts=1, delay=3600, error="e")
    for n in (0, 42, 44):  # given up by OTHER: claimable again
        assert store.reschedule(by_number[n].id, owner=OTHER, attempts=1, delay=0, error="e")
    # Still leased to OTHER: 45, 46, 47.

    assert sorted(drain_claims(store, OWNER, batch=2)) == [0, 42, 44]


def test_a_relay_behind_a_hot_key_takes_every_claimable_head_each_time(outbox: Outbox) -> None:
    """A relay completing what it claims, batch after batch: the heads scan goes round
    the keys from where it stopped, and a claim that comes back short has taken every
    claimable head (the scan went all the way round), so the backlog drains in order."""
    store = outbox.store
    layout: list[tuple[str, str | None]] = []
    layout += [("d1", "hot")] * 30 + [(f"d{n % 2}", f"k{n % 8}") for n in range(24)]
    layout += [("d1", None)] * 3
    store.write_now([pending(n, key=k, destination=d) for n, (d, k) in enumerate(layout)])
    state = dict.fromkeys(range(len(layout)), "pending")
    done: list[int] = []
    for _ in range(200):
        claimed = store.claim(owner=OWNER, batch=3, lease=60.0)
        taken = numbers(claimed)
        check_claim(layout, state, taken, batch=3, per_key=1)
        if not claimed:
            break
        assert store.complete([row.id for row in claimed], owner=OWNER) == len(claimed)
        state.update(dict.fromkeys(taken, "done"))
        done += taken
    assert sorted(done) == list(range(len(layout)))
    for group in set(layout):
        if group[1] is not None:
            mine = [n for n in done if layout[n] == group]
            assert mine == sorted(mine)


def test_a_short_claim_takes_every_claimable_head_of_many_keys(outbox: Outbox) -> None:
    store = outbox.store
    rows = [pending(n, key=f"key-{n % 300:03}", destination=f"d{n % 3}") for n in range(900)]
    store.write_now(rows)

    first = store.claim(owner=OWNER, batch=250, lease=60.0)
    assert numbers(first) == list(range(250))  # many keys: the oldest rows, in order
    rest = store.claim(owner=OWNER, batch=250, lease=60.0)
    assert sorted(numbers(rest)) == list(range(250, 300))
    assert store.claim(owner=OWNER, batch=250, lease=60.0) == []


def test_keys_sharing_a_prefix_and_empty_keys_are_keys_of_their_own(outbox: Outbox) -> None:
    store = outbox.store
    keys = ["", "a", "a ", "ab", "a" * 300, "a" * 299 + "b", "é", "Z"]
    rows = [pending(n, key="hot") for n in range(30)]
    rows += [pending(30 + n, key=key) for n, key in enumerate(keys * 2)]
    store.write_now(rows)

    taken = sorted(drain_claims(store, OWNER, batch=2))

    # MariaDB's PAD SPACE collation makes "a" and "a " one key (documented): the second
    # waits for the first there.
    expected = [0, *range(30, 30 + len(keys))]
    assert taken == expected or taken == [n for n in expected if n != 32]


# -- runs of one key (SupportsClaimRuns) -------------------------------------------------


def test_a_claim_with_per_key_takes_consecutive_rows_of_each_key(outbox: Outbox) -> None:
    store = runs_store(outbox)
    rows = [pending(n, key="a") for n in range(5)]
    rows += [pending(5 + n, key="b") for n in range(2)]
    rows += [pending(7, key=None)]
    outbox.store.write_now(rows)

    claimed = store.claim_runs(owner=OWNER, batch=10, lease=60.0, per_key=3)

    assert numbers(claimed) == [0, 1, 2, 5, 6, 7]
    assert [row.id for row in claimed] == sorted(row.id for row in claimed)
    assert outbox.store.claim(owner=OTHER, batch=10, lease=60.0) == []  # 3 waits for 2
    again = store.claim_runs(owner=OWNER, batch=10, lease=60.0, per_key=1)
    assert again == []


def test_a_run_stops_before_a_delayed_row_and_before_a_leased_row(outbox: Outbox) -> None:
    store = runs_store(outbox)
    outbox.store.write_now(
        [pending(n, key="a") for n in range(4)] + [pending(4 + n, key="b") for n in range(4)]
    )
    first = store.claim_runs(owner=OTHER, batch=10, lease=60.0, per_key=2)
    by_number = dict(zip(numbers(first), first, strict=True))
    assert sorted(by_number) == [0, 1, 4, 5]
    outbox.store.reschedule(by_number[0].id, owner=OTHER, attempts=1, delay=0, error="e")
    outbox.store.reschedule(by_number[1].id, owner=OTHER, attempts=1, delay=3600, error="e")
    outbox.store.reschedule(by_number[4].id, owner=OTHER, attempts=1, delay=0, error="e")
    # a: 0 due, 1 delayed, 2 and 3 pending. b: 4 due, 5 leased to OTHER, 6 and 7 pending.

    claimed = store.claim_runs(owner=OWNER, batch=10, lease=60.0, per_key=4)

    assert numbers(claimed) == [0, 4]


def test_the_batch_cuts_runs_in_id_order_leaving_each_a_prefix_of_its_key(
    outbox: Outbox,
) -> None:
    store = runs_store(outbox)
    outbox.store.write_now([pending(n, key="ab"[n % 2]) for n in range(10)])

    claimed = store.claim_runs(owner=OWNER, batch=5, lease=60.0, per_key=4)

    assert numbers(claimed) == [0, 1, 2, 3, 4]  # a: 0 2 4, b: 1 3


def test_the_sqlite_claim_looks_up_the_inbox_by_its_key_not_by_a_scan(outbox: Outbox) -> None:
    """Without the unary + in the claim's RETURNING, SQLite 3.40 scans the whole inbox
    for every claimed row: the relay slows down as the inbox grows."""
    import sqlite3

    from eventbus.outbox import SQLiteOutbox
    from eventbus.outbox._sqlite import _CLAIMS
    from eventbus.outbox.claims import ClaimState

    if not isinstance(outbox.store, SQLiteOutbox):
        pytest.skip("the stdlib store's statement")
    parameters = ClaimState().parameters(OWNER, 10, 1.0, 2)
    connection = sqlite3.connect(outbox.store.path)
    try:
        plans = [
            connection.execute("EXPLAIN QUERY PLAN " + claim, parameters).fetchall()
            for claim in _CLAIMS.values()
        ]
    finally:
        connection.close()
    for plan in plans:
        inbox = [detail for *_, detail in plan if " i " in f" {detail} "]
        assert inbox, plan
        assert all(detail.startswith("SEARCH i USING") for detail in inbox), inbox


@pytest.mark.parametrize("per_key", [0, -1, True, 1.5, "2"])
def test_a_bad_per_key_is_refused(outbox: Outbox, per_key: Any) -> None:
    store = runs_store(outbox)
    with pytest.raises(ConfigurationError, match="per_key"):
        store.claim_runs(owner=OWNER, batch=10, lease=60.0, per_key=per_key)


# -- the invariant, against a model ------------------------------------------------------

KEYS = st.sampled_from(["hot", "hot", "hot", "hot", None, "a", "b", "c"])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.lists(st.tuples(st.sampled_from(["d1", "d2"]), KEYS), min_size=1, max_size=12),
        ),
        st.tuples(
            st.just("claim"),
            st.sampled_from([OWNER, OTHER]),
            st.integers(min_value=1, max_value=6),
            st.integers(min_value=1, max_value=3),
        ),
        st.tuples(
            st.sampled_from(["complete", "retry", "delay", "lapse"]),
            st.integers(min_value=0, max_value=50),
        ),
    ),
    min_size=1,
    max_size=40,
)


def test_claims_keep_the_invariant_whatever_happens(outbox: Outbox) -> None:
    """Random writes, claims (any batch, any ``per_key`` where the store offers runs),
    completions, retries, delays and lapsed leases. Every claim takes, per key, only a
    run of consecutive rows from its first row left, all of them pending, at most
    ``per_key`` long; and a claim that comes back short of its batch took every
    claimable head (with its whole run) and every pending row without a key."""
    store: OutboxStore = outbox.store
    if not isinstance(store, SupportsClear):
        pytest.skip("each example starts from an empty outbox (SupportsClear)")
    clear = store.clear
    runs = isinstance(store, SupportsClaimRuns)

    @settings(
        max_examples=outbox.model_examples * 4,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(operations=OPERATIONS)
    def model(operations: list[tuple[Any, ...]]) -> None:
        clear()
        rows: list[tuple[str, str | None]] = []  # by number: (destination, key)
        state: dict[int, str] = {}  # pending, delayed, done, or the owner leasing it
        ids: dict[int, int] = {}
        for operation in operations:
            kind = operation[0]
            if kind == "write":
                start = len(rows)
                rows += operation[1]
                store.write_now(
                    [
                        pending(start + n, key=key, destination=destination)
                        for n, (destination, key) in enumerate(operation[1])
                    ]
                )
                state.update(dict.fromkeys(range(start, len(rows)), "pending"))
            elif kind == "claim":
                _, owner, batch, per_key = operation
                if not runs:
                    per_key = 1
                if per_key == 1:
                    claimed = store.claim(owner=owner, batch=batch, lease=60.0)
                else:
                    assert isinstance(store, SupportsClaimRuns)
                    claimed = store.claim_runs(
                        owner=owner, batch=batch, lease=60.0, per_key=per_key
                    )
                taken = numbers(claimed)
                check_claim(rows, state, taken, batch=batch, per_key=per_key)
                for row, n in zip(claimed, taken, strict=True):
                    state[n], ids[n] = owner, row.id
            else:
                leased = sorted(n for n, now in state.items() if now in (OWNER, OTHER))
                if not leased:
                    continue
                n = leased[operation[1] % len(leased)]
                owner = state[n]
                if kind == "complete":
                    assert store.complete([ids[n]], owner=owner) == 1
                    state[n] = "done"
                elif kind == "lapse":  # the relay died holding it
                    assert store.renew([ids[n]], owner=owner, lease=-1.0) == 1
                    state[n] = "pending"
                else:
                    delay = 0.0 if kind == "retry" else 3600.0
                    assert store.reschedule(ids[n], owner=owner, attempts=1, delay=delay, error="e")
                    state[n] = "pending" if kind == "retry" else "delayed"

    model()


def check_claim(
    rows: list[tuple[str, str | None]],
    state: dict[int, str],
    taken: list[int],
    *,
    batch: int,
    per_key: int,
) -> None:
    assert len(taken) <= batch
    assert len(set(taken)) == len(taken)
    left: dict[tuple[str, str], list[int]] = {}  # each key's rows not done, in order
    for n, (destination, key) in enumerate(rows):
        if key is not None and state[n] != "done":
            left.setdefault((destination, key), []).append(n)
    for n in taken:
        assert state[n] == "pending", f"row {n} was claimed while {state[n]}"
    for group, members in left.items():
        mine = [n for n in members if n in taken]
        # A run from the key's first row left, consecutive, all pending: the invariant.
        assert mine == members[: len(mine)], f"{group}: claimed {mine} of {members}"
        assert len(mine) <= per_key
        if len(taken) < batch:  # a short claim took every claimable run whole
            run = 0
            while run < min(per_key, len(members)) and state[members[run]] == "pending":
                run += 1
            assert len(mine) == run, f"{group}: a short claim took {mine} of {members}"
    if len(taken) < batch:
        loose = [n for n, (_, key) in enumerate(rows) if key is None and state[n] == "pending"]
        assert set(loose) <= set(taken)


# -- what a claim reads, behind hot keys -------------------------------------------------


def hot_backlog(store: OutboxStore, rows: int, *, keys: int = 50, churn: int = 600) -> None:
    """``rows`` rows over ``keys`` keys, after ``churn`` rows were claimed and completed
    (the table has seen deletes, as a relay's does)."""
    store.write_now([pending(n, key=f"k{n % keys}") for n in range(rows + churn)])
    done = 0
    while done < churn:
        claimed = store.claim(owner=OWNER, batch=200, lease=60.0)[: churn - done]
        assert claimed
        store.complete([row.id for row in claimed], owner=OWNER)
        store.renew([], owner=OWNER, lease=0.0)
        done += len(claimed)
    # What the churn left leased goes back to the pool.
    for row in store.claim(owner=OTHER, batch=1, lease=0.0):
        store.reschedule(row.id, owner=OTHER, attempts=0, delay=0, error="")


def test_a_sqlite_claim_behind_hot_keys_costs_the_same_at_any_backlog(outbox: Outbox) -> None:
    """Counted in SQLite's virtual-machine steps: a claim over 50 keys costs about the
    same behind 1,500 rows and behind 6,000. Probing every pending row for an earlier
    row of its key, a claim cost four times as much behind four times the rows."""
    from eventbus.outbox import SQLiteOutbox

    if not isinstance(outbox.store, SQLiteOutbox):
        pytest.skip("counted on the stdlib store's connection")

    def steps(rows: int) -> int:
        store = SQLiteOutbox(outbox.path.parent / f"hot-{rows}.db")
        hot_backlog(store, rows)
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        costs = []
        for _ in range(3):  # window first, then heads first: the steady state
            store._connection.set_progress_handler(count, 100)
            before = counted[0]
            claimed = store.claim(owner=OWNER, batch=200, lease=60.0)
            costs.append(counted[0] - before)
            store._connection.set_progress_handler(None, 0)
            assert len(claimed) == 50
            store.complete([row.id for row in claimed], owner=OWNER)
        store.close()
        return min(costs)

    small, large = steps(1500), steps(6000)
    assert large < 1.5 * small, (small, large)


def test_a_postgresql_claim_behind_hot_keys_reads_a_bounded_part_of_the_table(
    outbox: Outbox,
) -> None:
    """After ANALYZE on a table that has seen churn, with 50 keys behind 6,000 rows: a
    claim (window first, heads first, and heads first with runs of 4) reads fewer index
    entries and rows of the outbox than the backlog holds, never by a sequential scan;
    probing every pending row for an earlier one of its key read each row and an index
    entry beside it (and runs read by a subquery per row read the table per head)."""
    if outbox.backend.name != "postgresql":
        pytest.skip("a PostgreSQL planner choice")
    import json

    import sqlalchemy as sa

    store = outbox.store
    hot_backlog(store, 6000)
    table = store.outbox.name
    dialect = store._dialect
    with outbox.engine.begin() as connection:
        connection.exec_driver_sql(f"ANALYZE {table}")
    for heads_first, per_key in ((False, 1), (True, 1), (True, 4)):
        dialect._claim_state.heads_first = heads_first
        parameters = dialect._claim_state.parameters(OWNER, 200, 60.0, per_key)
        claim = dialect._claim_sql(
            "runs" if per_key > 1 else "window" if not heads_first else "heads"
        )
        with outbox.engine.connect() as connection:
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            (plan,) = connection.execute(
                sa.text("EXPLAIN (ANALYZE, FORMAT JSON) " + claim), parameters
            ).one()
            connection.rollback()
        nodes = list(_nodes(plan[0]["Plan"] if isinstance(plan, list) else json.loads(plan)))
        scans = [node for node in nodes if node.get("Relation Name") == table]
        read = sum(
            (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
            for node in scans
        )
        # Heads first: a few descents per key (and per_key rows of each). The window:
        # its rows, each probed once.
        assert read < (600 * per_key if heads_first else 4000), (heads_first, per_key, read)
        assert not [node for node in scans if node["Node Type"] == "Seq Scan"]


def _nodes(plan: dict[str, Any]) -> Any:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)
