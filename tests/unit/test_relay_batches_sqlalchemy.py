"""The SQLAlchemy store's batch statements, on every backend: the claim says (on
PostgreSQL) which rows the inbox holds, probing the inbox by its key; the completion on
PostgreSQL (one statement with arrays) is fenced, writes every mark once, and deletes
only the rows it names. A relay on these stores delivers a batch whose rows the inbox
partly holds, once each.
"""

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
from sqlalchemy.orm import Session

from eventbus import EventBus, EventRegistry, event
from eventbus.outbox import PendingRow

REGISTRY = EventRegistry()


@event("sa_batches.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


def row(destination: str, envelope_id: uuid.UUID) -> PendingRow:
    return PendingRow(
        envelope_id=envelope_id, name="n", destination=destination, key=None, payload=b"{}"
    )


@pytest.fixture
def store(engine: sa.Engine, prefix: str) -> Any:
    opened = SQLAlchemyOutbox(engine, prefix=prefix)
    yield opened
    opened.close()


def test_the_claim_says_which_rows_the_inbox_holds_on_postgresql(
    store: SQLAlchemyOutbox, backend: Any
) -> None:
    done, fresh = uuid.uuid4(), uuid.uuid4()
    store.write_now([row("h", done), row("h", fresh), row("g", done)])
    assert store.mark("h", done)
    claimed = store.claim(owner="me", batch=10, lease=5.0)
    expected = [True, False, False] if backend.name == "postgresql" else [None, None, None]
    assert [r.seen for r in claimed] == expected
    assert [(r.destination, r.envelope_id) for r in claimed] == [
        ("h", done),
        ("h", fresh),
        ("g", done),
    ]


def test_the_postgresql_claim_probes_the_inbox_by_its_primary_key(
    store: SQLAlchemyOutbox, engine: sa.Engine, backend: Any, prefix: str
) -> None:
    if backend.name != "postgresql":
        pytest.skip("a PostgreSQL planner choice")
    statements: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith("WITH"):
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", keep)
    try:
        store.claim(owner="me", batch=10, lease=5.0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", keep)
    [(statement, parameters)] = statements
    with engine.connect() as connection:
        plan = "\n".join(
            line for (line,) in connection.exec_driver_sql("EXPLAIN " + statement, parameters)
        )
    # Not "Seq Scan on ..._inbox" (a hashed subplan): that reads the whole inbox per claim.
    assert f"Index Only Scan using {prefix}_inbox_pkey" in plan, plan
    assert f"Seq Scan on {prefix}_inbox" not in plan, plan


def test_the_postgresql_claim_walks_the_primary_key_once_statistics_say_the_table_is_full(
    store: SQLAlchemyOutbox, engine: sa.Engine, backend: Any, prefix: str
) -> None:
    # With statistics, the planner's own choice is a scan of the whole table and a sort
    # (it cannot tell that the first rows in id order are the claimable ones); that made
    # each claim of a 4,000-row backlog five times slower. The claim's transaction must
    # make it walk the primary key, which stops at the batch's last row.
    if backend.name != "postgresql":
        pytest.skip("a PostgreSQL planner choice")
    store.write_now(
        [
            PendingRow(
                envelope_id=uuid.uuid4(), name="n", destination="h", key=f"k{n % 50}", payload=b"{}"
            )
            for n in range(2000)
        ]
    )
    with engine.begin() as connection:
        connection.exec_driver_sql(f"ANALYZE {prefix}_outbox")
    statements: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", keep)
    try:
        claimed = store.claim(owner="me", batch=20, lease=5.0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", keep)
    assert len(claimed) == 20
    *before, (claim, parameters) = statements
    assert claim.lstrip().startswith("WITH"), claim
    with engine.connect() as connection:
        for statement, values in before:  # the claim transaction's own settings
            connection.exec_driver_sql(statement, values)
        plan = "\n".join(
            line for (line,) in connection.exec_driver_sql("EXPLAIN " + claim, parameters)
        )
        connection.rollback()
    assert f"Index Scan using {prefix}_outbox_pkey on {prefix}_outbox o" in plan, plan
    assert f"Seq Scan on {prefix}_outbox" not in plan, plan


def test_complete_is_fenced_and_writes_each_mark_once(store: SQLAlchemyOutbox) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    store.write_now([row("h", envelope_id) for envelope_id in ids])
    mine = store.claim(owner="me", batch=3, lease=30.0)
    assert store.mark("h", ids[0])  # marked before: the completion skips it
    marks = [("h", envelope_id) for envelope_id in ids[:3]]
    assert store.complete([r.id for r in mine], owner="other", processed=marks) == 0
    assert store.status().pending == 4
    assert store.complete([mine[0].id, mine[1].id], owner="me", processed=marks) == 2
    assert store.status().pending == 2
    assert store.seen_many([("h", envelope_id) for envelope_id in ids]) == set(marks)
    assert store.complete([mine[2].id], owner="me", processed=marks) == 1
    assert store.status().pending == 1  # the unclaimed row stays


def test_a_relay_skips_rows_the_inbox_holds_and_delivers_the_rest(
    engine: sa.Engine, prefix: str, backend: Any
) -> None:
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05)
    writer = EventBus(registry=REGISTRY, outbox=outbox, relay=False)
    writer.subscribe(OrderPlaced, name="charge", delivery="durable")(lambda _e: None)
    with Session(engine) as session, writer.transaction(session):
        for number in range(6):
            writer.publish(OrderPlaced(number=number))
    writer.close()
    peek = outbox.claim(owner="peek", batch=2, lease=0.001)
    for claimed in peek:
        assert outbox.mark("charge", claimed.envelope_id)  # handled; its relay then died
    bus = EventBus(registry=REGISTRY, outbox=outbox)
    ran: list[int] = []
    bus.subscribe(OrderPlaced, name="charge", delivery="durable")(lambda e: ran.append(e.number))
    try:
        bus.start()
        bus.drain(timeout=20)
    finally:
        bus.close()
    assert sorted(ran) == [2, 3, 4, 5]
    assert outbox.status().pending == 0


def test_complete_marks_handlers_whose_names_hold_any_character(store: SQLAlchemyOutbox) -> None:
    # The PostgreSQL completion sends ids and envelope ids as array literals; handler
    # names, which may hold commas, quotes, braces and backslashes, must come back as is.
    names = ["a,b", 'say "hi"', "{x}", "back\\slash", "plain"]
    envelopes = [uuid.uuid4() for _ in names]
    store.write_now(
        [row(name, envelope_id) for name, envelope_id in zip(names, envelopes, strict=True)]
    )
    claimed = store.claim(owner="me", batch=10, lease=30.0)
    marks = [(r.destination, r.envelope_id) for r in claimed]
    assert store.complete([r.id for r in claimed], owner="me", processed=marks) == len(names)
    assert store.seen_many(marks) == set(zip(names, envelopes, strict=True))
    assert not store.seen_many([("a", envelopes[0]), ("b", envelopes[0])])


def reloptions(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        found = connection.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": table}
        ).scalar()
    return list(found or [])


def test_an_outbox_table_the_store_creates_on_postgresql_leaves_room_for_leases(
    store: SQLAlchemyOutbox, engine: sa.Engine, backend: Any, prefix: str
) -> None:
    if backend.name != "postgresql":
        pytest.skip("a PostgreSQL storage parameter")
    assert reloptions(engine, f"{prefix}_outbox") == ["fillfactor=50"]
    assert reloptions(engine, f"{prefix}_inbox") == []
    assert f"ALTER TABLE {prefix}_outbox SET (fillfactor = 50);" in store.schema_sql()


def test_an_outbox_table_the_application_made_keeps_its_storage_settings(
    engine: sa.Engine, backend: Any, prefix: str
) -> None:
    if backend.name != "postgresql":
        pytest.skip("a PostgreSQL storage parameter")
    from eventbus_contrib.sqlalchemy import outbox_tables

    metadata = sa.MetaData()
    outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)  # as a migration would, without the ALTER
    SQLAlchemyOutbox(engine, prefix=prefix).close()
    assert reloptions(engine, f"{prefix}_outbox") == []
