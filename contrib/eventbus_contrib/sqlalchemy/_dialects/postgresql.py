"""PostgreSQL (>= 9.5): one-statement claims and completions, NOTIFY on commit.

The claim is one ``WITH RECURSIVE ... UPDATE ... RETURNING``: a window of the oldest rows,
then each key's head by a loose index scan (``eventbus_contrib._claims``), what it picks
locked ``FOR UPDATE SKIP LOCKED``, its transaction planned without sequential scans; the
completion writes the inbox marks and deletes the rows in one statement with array
parameters. The clock
is ``clock_timestamp()`` (``now()`` is the transaction's start). Outbox pages are left
half empty (fillfactor) so a claim's UPDATE is a HOT one. Writes may NOTIFY the relays,
which LISTEN on a connection of their own.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from eventbus_contrib._claims import postgresql_claim_sql, postgresql_window_sql

from .._core import logger
from .base import ReturningDialect

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

__all__ = ["PostgreSQLDialect"]

_FILLFACTOR: Final = 50
"""Percent of each outbox page filled by INSERTs (see ``storage_sql``)."""


class PostgreSQLDialect(ReturningDialect):
    """PostgreSQL, through psycopg (3)."""

    now_sql = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    floor = ((9, 5), "PostgreSQL 9.5 (FOR UPDATE SKIP LOCKED)")
    claim_reports_seen = True

    def __init__(self, engine: Engine, outbox: sa.Table, inbox: sa.Table) -> None:
        super().__init__(engine, outbox, inbox)
        self._materialize = False
        self._complete_sql = self._completion_sql()

    def prepare(self, connection: Connection) -> None:
        super().prepare(connection)
        version = connection.dialect.server_version_info or ()
        self._materialize = tuple(version[:1]) >= (12,)

    # -- the relay -------------------------------------------------------------------------

    def claim(
        self, connection: Connection, *, owner: str, batch: int, lease: float, per_key: int = 1
    ) -> Sequence[Any]:
        # Once its statistics say most rows pass the filter, the planner prefers a
        # sequential scan of the whole table and a sort (it cannot see that the
        # first rows in id order are the claimable ones): measured on 4,000 rows and
        # 1,000 keys, 14.9 ms a claim against 2.8 ms by the primary key, which stops
        # at the batch's last row. SET LOCAL ends with this short transaction.
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return super().claim(connection, owner=owner, batch=batch, lease=lease, per_key=per_key)

    def _claim_sql(self, statement: str) -> str:
        """Its picks are materialised CTEs, each run exactly once: as ``id IN (SELECT
        ...)``, a nested-loop plan (the planner's choice on a table whose statistics say
        it is empty) runs a locking subquery again for each outer row; forced, that
        leased 30 rows for a batch of 2. Whether the inbox holds the envelope already
        spares the relay a statement; its OFFSET 0 keeps PostgreSQL from turning the
        EXISTS into a hashed subplan, a scan of the whole inbox per claim (its choice
        while the inbox has no statistics): with it, each row is one probe of the
        inbox's primary key."""
        outbox, inbox, now = self.outbox.name, self.inbox.name, self.now_sql
        if statement == "window":
            return postgresql_window_sql(outbox, inbox, now, materialize=self._materialize)
        per_key = 2 if statement == "runs" else 1
        return postgresql_claim_sql(
            outbox, inbox, now, per_key=per_key, materialize=self._materialize
        )

    def complete(
        self, connection: Connection, ids: list[int], *, owner: str, pairs: list[tuple[str, str]]
    ) -> int:
        result = connection.exec_driver_sql(
            self._complete_sql, _completion_parameters(ids, owner, pairs)
        )
        return int(result.rowcount)

    def _completion_sql(self) -> str:
        """Write the inbox marks and delete the completed rows in one statement (a
        data-modifying CTE always runs), each list bound as one array. The marks go in
        the order given (sorted), so two relays marking the same pairs cannot deadlock."""
        outbox, inbox, now = self.outbox.name, self.inbox.name, self.now_sql
        return (
            f"WITH marked AS (INSERT INTO {inbox} (handler, envelope_id, processed_at) "
            f"SELECT (%(handlers)s::varchar[])[m.handler], m.envelope_id, {now} "
            "FROM unnest(%(which)s::int[], %(envelopes)s::varchar[]) "
            "WITH ORDINALITY AS m(handler, envelope_id, n) ORDER BY m.n "
            "ON CONFLICT DO NOTHING) "
            f"DELETE FROM {outbox} WHERE lease_owner = %(owner)s AND id = ANY(%(ids)s::bigint[])"
        )

    # -- the inbox -------------------------------------------------------------------------

    def _insert_new(self, values: dict[str, Any] | list[dict[str, Any]]) -> sa.Insert:
        return postgresql.insert(self.inbox).values(values).on_conflict_do_nothing()

    # -- notifications -----------------------------------------------------------------------

    def notifier(self, engine: Engine, *, channel: str, url: str) -> PostgreSQLNotifier:
        return PostgreSQLNotifier(engine, self.outbox.name, self.now_sql, channel=channel, url=url)

    # -- the schema ------------------------------------------------------------------------

    def lock_schema(self, connection: Connection) -> None:
        """An advisory lock held for the transaction, keyed by the outbox's name."""
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(self.outbox.name)}
        )

    def storage_sql(self) -> list[str]:
        """Leave half of each outbox page free. The relay updates every row once (its
        lease) before deleting it; with room on the page, that update is a HOT one, which
        writes no index entries: a claim of 200 rows then writes a quarter of the WAL
        (45 KB instead of 181 KB), and takes about half as long. The outbox is a queue,
        its rows short-lived, so the space costs little."""
        return [f"ALTER TABLE {self.outbox.name} SET (fillfactor = {_FILLFACTOR})"]


class PostgreSQLNotifier:
    """``NOTIFY`` with every write (sent by PostgreSQL at COMMIT only), ``LISTEN`` on a
    connection of the listener's own.

    Notifications are lost while nobody listens, take a global lock at commit, and do
    not pass PgBouncer in transaction mode: the store's ``notify=False`` turns them off.
    """

    def __init__(self, engine: Engine, table: str, now_sql: str, *, channel: str, url: str) -> None:
        self._engine = engine
        self._table = table
        self._now_sql = now_sql
        self._channel = channel
        self._url = url
        self._inserts: dict[int, sa.TextClause] = {}

    def insert(self, count: int) -> sa.TextClause:
        """One round trip for the rows and the notification: the INSERT in a
        data-modifying CTE, then ``pg_notify``. Built once per row count."""
        statement = self._inserts.get(count)
        if statement is None:
            now = self._now_sql
            values = ", ".join(
                f"(:envelope_id_{n}, :name_{n}, :destination_{n}, :key_{n}, :payload_{n}, "
                f"{now}, {now})"
                for n in range(count)
            )
            # Table and channel names are ours (a checked prefix); every value is bound.
            sql = (
                f"WITH written AS (INSERT INTO {self._table} (envelope_id, name, destination, "
                f"key, payload, created_at, available_at) VALUES {values} RETURNING 1) "
                f"SELECT pg_notify('{self._channel}', '')"
            )
            statement = sa.text(sql).bindparams(
                *(sa.bindparam(f"payload_{n}", type_=sa.LargeBinary()) for n in range(count))
            )
            self._inserts[count] = statement
        return statement

    def listen(self, wake: Callable[[], None], *, pause: float) -> Callable[[], None]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen, args=(wake, stop, pause), name="eventbus-listen", daemon=True
        )
        thread.start()

        def stop_listening() -> None:
            # Wait for the listener to close its connection (it looks every 0.5 s), so
            # nothing is left open when the relay, and then the application, stops.
            stop.set()
            thread.join(timeout=5)

        return stop_listening

    def _listen(self, wake: Callable[[], None], stop: threading.Event, pause: float) -> None:
        while not stop.is_set():
            try:
                raw = self._engine.raw_connection()
                try:
                    driver: Any = raw.driver_connection
                    driver.autocommit = True
                    driver.execute(f'LISTEN "{self._channel}"')
                    while not stop.is_set():
                        for _ in driver.notifies(timeout=0.5, stop_after=1):
                            wake()
                finally:
                    raw.invalidate()  # a LISTENing connection must not go back to the pool
            except Exception:
                logger.warning(
                    "the outbox listener on %s lost its connection; polling meanwhile",
                    self._url,
                    exc_info=True,
                )
                stop.wait(pause)


def _completion_parameters(
    ids: list[int], owner: str, pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    """The parameters of the completion. Ids, the marks' envelope ids and the index of
    each mark's handler go as array literals in one text each: psycopg adapts a Python
    list element by element in Python, which cost about 1 ms for a batch of 200 (more
    than the statement). Those values need no quoting: digits, and UUIDs in their
    canonical text. Handler names may hold any character: psycopg adapts their (short)
    list of distinct names."""
    handlers: dict[str, int] = {}
    for handler, _ in pairs:
        handlers.setdefault(handler, len(handlers) + 1)  # PostgreSQL arrays count from 1
    return {
        "handlers": list(handlers),
        "which": _array_literal(str(handlers[handler]) for handler, _ in pairs),
        "envelopes": _array_literal(envelope_id for _, envelope_id in pairs),
        "owner": owner,
        "ids": _array_literal(str(int(row_id)) for row_id in ids),
    }


def _array_literal(items: Iterable[str]) -> str:
    """A PostgreSQL array literal of items that need no quoting."""
    return "{" + ",".join(items) + "}"


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a table name."""
    digest = hashlib.blake2b(f"eventbus:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
