"""What only the SQLAlchemy store has, on SQLite, PostgreSQL and MariaDB.

The OutboxStore contract (writes in an ORM session, claims, leases, per-key order, late
commits, the inbox) is tested once for every store in test_outbox_contract.py; this file
keeps what is about SQLAlchemy: the other transaction scopes (a ``Connection``, and the
``transaction_control`` that ``bus.transaction()`` drives), resources it must refuse,
the tables in the application's ``MetaData``, PostgreSQL's LISTEN/NOTIFY and planner,
passwords in messages, and the SQLite schema it shares with ``SQLiteOutbox``.
"""

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox, outbox_tables
from sqlalchemy.orm import Session

from eventbus.errors import ConfigurationError, OutboxError
from eventbus.outbox import ClaimedRow, PendingRow, SQLiteOutbox

OWNER = "relay-a"


def pending(n: int = 0, *, key: str | None = None) -> PendingRow:
    return PendingRow(uuid.uuid4(), "order.placed", "billing.charge_card", key, b"%d" % n)


def numbers(rows: list[ClaimedRow]) -> list[int]:
    return [int(row.payload) for row in rows]


def claim(store: SQLAlchemyOutbox, *, batch: int = 100) -> list[ClaimedRow]:
    return store.claim(owner=OWNER, batch=batch, lease=30.0)


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


# -- transaction scopes ----------------------------------------------------------------


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


def test_mark_through_a_connection_joins_its_transaction(
    store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    marked = uuid.uuid4()
    with engine.connect() as connection:
        with connection.begin():
            assert store.mark("h", marked, connection) is True
            assert store.mark("h", marked, connection) is False
            assert store.seen("h", marked) is False  # not before the commit
        dropped = connection.begin()
        assert store.mark("h", marked, connection) is False  # committed: a duplicate
        assert store.mark("g", marked, connection) is True
        dropped.rollback()
    assert store.seen("h", marked) is True
    assert store.seen("g", marked) is False


def test_a_handler_transaction_is_a_session_in_a_transaction(store: SQLAlchemyOutbox) -> None:
    with store.handler_transaction() as session:
        assert type(session) is Session
        assert session.in_transaction()
        assert session.get_bind().url == store.engine.url


def test_the_repr_names_the_database_and_the_tables(
    open_store: Callable[..., SQLAlchemyOutbox], engine: sa.Engine, prefix: str
) -> None:
    # Passwords: the URL is rendered hidden (errors with a password are tested below).
    assert repr(open_store()) == (
        f"SQLAlchemyOutbox({engine.url.render_as_string(hide_password=True)!r}, prefix={prefix!r})"
    )


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


# -- PostgreSQL ------------------------------------------------------------------------


def _listening(store: SQLAlchemyOutbox) -> tuple[threading.Event, Callable[[], None] | None]:
    woken = threading.Event()
    return woken, store.listen(woken.set)


def test_a_commit_wakes_a_listener_where_the_database_notifies(
    backend: Any, store: SQLAlchemyOutbox, engine: sa.Engine
) -> None:
    """NOTIFY is sent at COMMIT only: a rolled-back write wakes nobody. Without
    notifications, listen says so (None) and the relay polls."""
    woken, stop = _listening(store)
    if not backend.notifications:
        assert stop is None
        return
    assert stop is not None
    try:
        with Session(engine) as session:
            session.begin()
            store.write(session, [pending(1)])
            session.rollback()
        assert not woken.wait(1.5)  # the listener polls every 0.5 s: time to see it
        with Session(engine) as session, session.begin():
            store.write(session, [pending(2)])
        assert woken.wait(10)
    finally:
        stop()


def test_notify_false_turns_notifications_off(
    open_store: Callable[..., SQLAlchemyOutbox],
) -> None:
    assert open_store(notify=False).listen(lambda: None) is None


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


# -- the tables and the published DDL -----------------------------------------------


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


# The settings every store checks (batch, lease, poll_interval) are in the contract.
@pytest.mark.parametrize("prefix", ["1abc", "bad-name", "x" * 41], ids=repr)
def test_bad_prefixes_are_refused(tmp_path: Path, prefix: str) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        with pytest.raises(ConfigurationError, match="prefix"):
            SQLAlchemyOutbox(engine, prefix=prefix)
    finally:
        engine.dispose()


def test_what_is_not_an_engine_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="create_engine"):
        SQLAlchemyOutbox(f"sqlite:///{tmp_path / 'app.db'}")  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_memory_databases_are_refused(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with pytest.raises(ConfigurationError, match="memory"):
            SQLAlchemyOutbox(engine)
    finally:
        engine.dispose()


def test_a_database_the_outbox_does_not_serve_is_refused(tmp_path: Path) -> None:
    """The store picks how to speak to its database once, from the engine: any other
    database is refused then, naming those it serves."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    engine.dialect.name = "firebird"  # no other database's driver is installed here
    try:
        with pytest.raises(ConfigurationError, match="MariaDB, MySQL and SQLite, not firebird"):
            SQLAlchemyOutbox(engine)
    finally:
        engine.dispose()


def test_mariadb_urls_are_served_like_mysql_ones(
    backend: Any, engine: sa.Engine, prefix: str
) -> None:
    """SQLAlchemy names the dialect of ``mariadb+pymysql://`` URLs ``mariadb`` and that of
    ``mysql+pymysql://`` ones ``mysql``: the outbox serves both, and a store on one takes
    the sessions of the other, on the same server."""
    if backend.name != "mariadb":
        pytest.skip("MariaDB's own URL scheme")
    mariadb = sa.create_engine(
        sa.make_url(backend.url).set(drivername="mariadb+pymysql"),
        connect_args={"connect_timeout": 3},
    )
    try:
        assert mariadb.dialect.name == "mariadb"
        store = SQLAlchemyOutbox(mariadb, prefix=prefix)
        with Session(engine) as session, session.begin():
            store.write(session, [pending(1)])
        assert numbers(claim(store)) == [1]
        store.close()
    finally:
        mariadb.dispose()


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


# -- the batch statements: the claim reads the inbox, the completion writes it -----------


def row(destination: str, envelope_id: uuid.UUID) -> PendingRow:
    return PendingRow(
        envelope_id=envelope_id, name="n", destination=destination, key=None, payload=b"{}"
    )


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
    metadata = sa.MetaData()
    outbox_tables(metadata, prefix=prefix)
    metadata.create_all(engine)  # as a migration would, without the ALTER
    SQLAlchemyOutbox(engine, prefix=prefix).close()
    assert reloptions(engine, f"{prefix}_outbox") == []
