"""The outbox on SQLite (stdlib sqlite3): the embedded default.

Rows are written with the application's own connection, inside its transaction; the
relay claims, completes and reschedules them through a connection of its own. Every write
runs in ``BEGIN IMMEDIATE`` (a deferred transaction that reads then writes gets
SQLITE_BUSY at once, without waiting for the busy timeout), and every change the relay
makes is fenced by its lease owner: a relay that lost its lease cannot complete a row.

SQLite allows one writer at a time, so ids are handed out in commit order and the relay
cannot skip a row committed late. Per key (and destination) a row is claimable only
when no earlier row of that key is left, which keeps outbox order across retries and
across several relays.

Durability: WAL with ``synchronous=NORMAL`` survives a process crash, not a power loss;
pass ``synchronous="FULL"`` for that.

The store remembers, per thread, the application connections it knows (made by
``connect()``, set up by ``configure()``, or given to ``bus.transaction()``), weakly, so
that a durable publish outside ``bus.transaction()`` while one of them is inside a
transaction is refused instead of committing its row on the side (``open_transaction``).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

from .._records import ClaimedRow, OutboxStatus, PendingRow
from .._redact import redact
from .._transactions import SQLiteTransaction
from ..errors import ConfigurationError, OutboxError
from .claims import ClaimState, claim_sql, window_sql

__all__ = ["SQLiteOutbox"]

# Unix seconds with sub-second precision, from the database's clock (SQLite >= 3.8).
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

SCHEMA = """
CREATE TABLE IF NOT EXISTS eventbus_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope_id TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL,
    key TEXT,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    available_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until REAL,
    last_error TEXT,
    first_failed_at REAL
);
CREATE INDEX IF NOT EXISTS eventbus_outbox_available ON eventbus_outbox (available_at, id);
CREATE INDEX IF NOT EXISTS eventbus_outbox_key ON eventbus_outbox (destination, key, id);
CREATE TABLE IF NOT EXISTS eventbus_inbox (
    handler TEXT NOT NULL,
    envelope_id TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (handler, envelope_id)
);
"""

_INSERT = (
    "INSERT INTO eventbus_outbox (envelope_id, name, destination, key, payload, "
    f"created_at, available_at) VALUES (?, ?, ?, ?, ?, {_NOW}, {_NOW})"
)

_CLAIMS = {
    "window": window_sql("eventbus_outbox", "eventbus_inbox", _NOW),
    "heads": claim_sql("eventbus_outbox", "eventbus_inbox", _NOW, per_key=1),
    "runs": claim_sql("eventbus_outbox", "eventbus_inbox", _NOW, per_key=2),
}
"""The statements of a claim (see ``_claims``): the window, the heads scan, and runs."""
_CLAIM = _CLAIMS["window"]
"""The claim's first statement, on its own: one row per key from a window of the oldest."""

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_claimed_row = ClaimedRow.from_columns
_by_id = itemgetter(0)

_ADDED_COLUMNS = (("first_failed_at", "REAL"),)
"""Columns added to eventbus_outbox after its first release, with their types: a store
that creates the schema adds those an existing table lacks; one that may not
(``create=False``) refuses to start, giving the statements to run."""


class _KnownConnection(sqlite3.Connection):
    """A sqlite3 connection the outbox can refer to weakly (the stdlib class cannot be):
    remembering it must not keep it open, nor its transaction with it."""


class _Known(threading.local):
    """This thread's application connections, each with the database file it is on."""

    def __init__(self) -> None:
        self.connections: list[tuple[weakref.ref[sqlite3.Connection], str]] = []


_known = _Known()


class SQLiteOutbox:
    """The transactional outbox in a SQLite database file (the application's own)."""

    resource_type: type[Any] = sqlite3.Connection

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        synchronous: str = "NORMAL",
        create: bool = True,
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
    ) -> None:
        """Open (and by default create) the outbox tables in the database at ``path``.

        ``batch``, ``lease`` and ``poll_interval`` set how it is relayed: rows claimed at
        once, seconds a relay holds a claim before another may take it over (renewed
        while a handler runs), and seconds between polls when no commit woke the relay.
        """
        for name, value in (("batch", batch),):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        for name, number in (("lease", lease), ("poll_interval", poll_interval)):
            if not (number > 0 and math.isfinite(number)):
                raise ConfigurationError(f"{name} must be > 0 seconds, got {number!r}")
        self.batch = batch
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(_SYNCHRONOUS)}, got {synchronous!r}"
            )
        if timeout < 0:
            raise ConfigurationError(f"timeout must be >= 0 seconds, got {timeout!r}")
        self._path = os.fspath(path)
        if self._path == ":memory:":
            raise ConfigurationError(
                "the outbox must live in a database file that the application's own "
                "connections share; ':memory:' is private to one connection"
            )
        self._timeout = timeout
        self._synchronous = synchronous.upper()
        self._lock = threading.Lock()
        self._closed = False
        self._claims = ClaimState()
        self._connection = self._connect()
        try:
            if create:
                self.create_schema()
            else:
                self._check_columns()
        except BaseException:
            self._connection.close()  # a store that could not open leaves nothing open
            raise

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self._path!r})"

    def _connect(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = None
        try:
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
            connection.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
            self._wal(connection)
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
        except (OSError, sqlite3.Error) as exc:
            if connection is not None:
                connection.close()
            raise OutboxError(f"cannot open the outbox database {self._path!r}: {exc}") from exc
        return connection

    def _wal(self, connection: sqlite3.Connection) -> None:
        """Switch to WAL. Several processes opening a new database at once can get
        'database is locked' here at once, without the busy timeout: try again until it."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
            else:
                return

    @classmethod
    def schema_sql(cls) -> str:
        """The DDL, for applications that manage their own migrations."""
        return SCHEMA

    @classmethod
    def migration_sql(cls) -> str:
        """The statements that bring an outbox table of an earlier release up to date."""
        return "".join(
            f"ALTER TABLE eventbus_outbox ADD COLUMN {name} {kind};\n"
            for name, kind in _ADDED_COLUMNS
        )

    def create_schema(self) -> None:
        """Create the outbox and inbox tables if they do not exist, and add the columns
        that an outbox table of an earlier release lacks."""
        with self._guard("create the schema") as connection:
            connection.executescript(SCHEMA)
        with self._transaction("add the new outbox columns") as connection:
            # Under the write lock: two processes starting at once add a column once.
            for name, kind in self._missing_columns(connection):
                connection.execute(f"ALTER TABLE eventbus_outbox ADD COLUMN {name} {kind}")

    def _missing_columns(self, connection: sqlite3.Connection) -> list[tuple[str, str]]:
        """The added columns an existing outbox table lacks (none if there is no table)."""
        found = {row[1] for row in connection.execute("PRAGMA table_info(eventbus_outbox)")}
        if not found:
            return []
        return [(name, kind) for name, kind in _ADDED_COLUMNS if name not in found]

    def _check_columns(self) -> None:
        """With ``create=False``: refuse an outbox table of an earlier release."""
        with self._guard("read the outbox schema") as connection:
            missing = self._missing_columns(connection)
        if missing:
            names = ", ".join(name for name, _ in missing)
            raise OutboxError(
                f"the outbox table in {self._path!r} lacks the column(s) {names}, which "
                "this version of eventbus needs. Add them with your migrations: "
                f"{self.migration_sql().strip()} (or open SQLiteOutbox with create=True, "
                "which adds them)"
            )

    def configure(self, connection: sqlite3.Connection) -> None:
        """Set up an application connection to share the database with the relay."""
        connection.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")
        self._remember(connection)

    def _remember(self, connection: sqlite3.Connection) -> None:
        """Know ``connection`` in this thread (if it can be referred to weakly: the stdlib
        class cannot, ``connect()``'s can), forgetting those closed or gone."""
        if type(connection) is sqlite3.Connection:
            return
        try:
            reference = weakref.ref(connection)
        except TypeError:  # a subclass with __slots__ and no __weakref__
            return
        kept = [(ref, path) for ref, path in _known.connections if _open(ref())]
        if not any(ref() is connection for ref, _ in kept):
            kept.append((reference, self._path))
        _known.connections = kept

    def open_transaction(self) -> sqlite3.Connection | None:
        """A connection this thread knows, on this database, that is inside a
        transaction: a durable publish outside ``bus.transaction()`` must not commit its
        row beside it. None when there is none."""
        for ref, path in _known.connections:
            connection = ref()
            if path != self._path or connection is None or not _open(connection):
                continue
            if connection.in_transaction:
                return connection
        return None

    # -- the publisher's side ----------------------------------------------------------

    def write(self, connection: sqlite3.Connection, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` through the application's connection, in its transaction."""
        try:
            connection.executemany(
                _INSERT,
                [(str(r.envelope_id), r.name, r.destination, r.key, r.payload) for r in rows],
            )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot write to the outbox in {self._path!r}: {exc}") from exc

    def write_now(self, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` in a transaction of their own (a publish outside any scope)."""
        with self._transaction("write to the outbox") as connection:
            self.write(connection, rows)

    # -- the relay's side --------------------------------------------------------------

    def claim(self, *, owner: str, batch: int, lease: float, per_key: int = 1) -> list[ClaimedRow]:
        """Lease up to ``batch`` available rows, oldest first, each the first row of its
        key left or, with ``per_key`` > 1, up to that many consecutive rows of one key
        from its first (``SupportsClaimRuns``); each says whether its destination's inbox
        holds its envelope already."""
        with self._transaction("claim outbox rows") as connection:

            def execute(statement: str, parameters: dict[str, Any]) -> list[Any]:
                return connection.execute(_CLAIMS[statement], parameters).fetchall()

            found = self._claims.claim(execute, owner, batch, lease, per_key)
        # The claim's columns are the row's, in order: one C call a row, no parsing (the
        # heads scan's two trailing columns, where it stopped, are past what a row reads).
        rows = list(map(_claimed_row, found))
        rows.sort(key=_by_id)
        return rows

    def claim_runs(self, *, owner: str, batch: int, lease: float, per_key: int) -> list[ClaimedRow]:
        """``claim`` with ``per_key`` (``SupportsClaimRuns``)."""
        return self.claim(owner=owner, batch=batch, lease=lease, per_key=per_key)

    def complete(
        self,
        ids: Iterable[int],
        *,
        owner: str,
        processed: Sequence[tuple[str, uuid.UUID]] = (),
    ) -> int:
        """Delete delivered rows that ``owner`` still holds; returns how many.

        ``processed`` (handler, envelope id) pairs are written to the inbox in the same
        transaction, so a row and its mark go together.
        """
        ids = list(ids)
        if not ids:
            return 0
        with self._transaction("complete outbox rows") as connection:
            if processed:
                connection.executemany(
                    f"INSERT OR IGNORE INTO eventbus_inbox (handler, envelope_id, processed_at) "
                    f"VALUES (?, ?, {_NOW})",
                    [(handler, str(envelope_id)) for handler, envelope_id in processed],
                )
            marks = ",".join("?" * len(ids))
            cursor = connection.execute(
                f"DELETE FROM eventbus_outbox WHERE lease_owner = ? AND id IN ({marks})",
                [owner, *ids],
            )
            return cursor.rowcount

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool:
        """Put a failed row back, available again in ``delay`` seconds (fenced); ``error``
        is kept masked (``eventbus.redact``) and cut to 2,000 characters. The first
        reschedule of a row stamps its ``first_failed_at``; later ones keep it."""
        with self._transaction("reschedule an outbox row") as connection:
            cursor = connection.execute(
                f"UPDATE eventbus_outbox SET attempts = ?, available_at = {_NOW} + ?, "
                "lease_owner = NULL, lease_until = NULL, last_error = ?, "
                f"first_failed_at = COALESCE(first_failed_at, {_NOW}) "
                "WHERE id = ? AND lease_owner = ?",
                (attempts, delay, redact(error)[:2000], row_id, owner),
            )
            return cursor.rowcount == 1

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int:
        """Extend the lease of rows still being delivered."""
        ids = list(ids)
        if not ids:
            return 0
        with self._transaction("renew outbox leases") as connection:
            marks = ",".join("?" * len(ids))
            cursor = connection.execute(
                f"UPDATE eventbus_outbox SET lease_until = {_NOW} + ? "
                f"WHERE lease_owner = ? AND id IN ({marks})",
                [lease, owner, *ids],
            )
            return cursor.rowcount

    def status(self) -> OutboxStatus:
        """Counts and ages, for operators."""
        with self._guard("read the outbox status") as connection:
            total, in_flight, delayed, oldest = connection.execute(
                f"SELECT COUNT(*), "
                f"SUM(CASE WHEN lease_until >= {_NOW} THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN available_at > {_NOW} THEN 1 ELSE 0 END), "
                f"{_NOW} - MIN(created_at) FROM eventbus_outbox"
            ).fetchone()
            by_name = dict(
                connection.execute(
                    "SELECT name, COUNT(*) FROM eventbus_outbox GROUP BY name ORDER BY name"
                ).fetchall()
            )
        return OutboxStatus(
            pending=total,
            in_flight=in_flight or 0,
            delayed=delayed or 0,
            oldest_age=None if oldest is None else max(0.0, oldest),
            by_name=by_name,
        )

    # -- the inbox -----------------------------------------------------------------------

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        """Whether ``handler`` already processed ``envelope_id``."""
        with self._guard("read the inbox") as connection:
            found = connection.execute(
                "SELECT 1 FROM eventbus_inbox WHERE handler = ? AND envelope_id = ?",
                (handler, str(envelope_id)),
            ).fetchone()
        return found is not None

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        """Which of the (handler, envelope id) pairs the inbox already holds."""
        found: set[tuple[str, uuid.UUID]] = set()
        with self._guard("read the inbox") as connection:
            for start in range(0, len(pairs), 400):  # two parameters each, under 999
                chunk = pairs[start : start + 400]
                clause = " OR ".join(["(handler = ? AND envelope_id = ?)"] * len(chunk))
                values = [
                    value for handler, envelope_id in chunk for value in (handler, str(envelope_id))
                ]
                for handler, envelope_id in connection.execute(
                    f"SELECT handler, envelope_id FROM eventbus_inbox WHERE {clause}", values
                ):
                    found.add((handler, uuid.UUID(envelope_id)))
        return found

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        """Record that ``handler`` processed ``envelope_id``; False if it already had.

        With ``connection``, the INSERT joins that connection's open transaction (the
        handler's own writes), so effects and mark commit together.
        """
        statement = (
            f"INSERT OR IGNORE INTO eventbus_inbox (handler, envelope_id, processed_at) "
            f"VALUES (?, ?, {_NOW})"
        )
        if connection is not None:
            cursor: sqlite3.Cursor = connection.execute(statement, (handler, str(envelope_id)))
            return cursor.rowcount == 1
        with self._transaction("write the inbox") as own:
            return own.execute(statement, (handler, str(envelope_id))).rowcount == 1

    def clear(self) -> None:
        """Delete every outbox row and inbox mark (tests: ``SupportsClear``)."""
        with self._transaction("clear the outbox") as connection:
            connection.execute("DELETE FROM eventbus_outbox")
            connection.execute("DELETE FROM eventbus_inbox")
        self._claims = ClaimState()  # an empty outbox: nothing to remember of its keys

    def connect(self) -> sqlite3.Connection:
        """A new connection to the application's database, set up like the relay's (and
        known to the outbox in this thread, see ``open_transaction``)."""
        connection = sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, factory=_KnownConnection
        )
        self.configure(connection)
        return connection

    @contextmanager
    def handler_transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection in a transaction of its own, for a durable handler that takes one.

        ``BEGIN IMMEDIATE``: SQLite's write lock is held while the handler runs, so keep
        such handlers short. Commits on a clean exit, rolls back on an exception.
        """
        if self._closed:
            raise OutboxError(
                f"cannot open a handler transaction: the outbox {self._path!r} is closed"
            )
        connection = self.connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            if connection.in_transaction:
                connection.execute("COMMIT")
        finally:
            connection.close()

    def transaction_control(self, resource: object) -> SQLiteTransaction | None:
        """How ``bus.transaction()`` drives a sqlite3 connection (else None); the
        connection is known to the outbox in this thread from now on."""
        if not isinstance(resource, sqlite3.Connection):
            return None
        self._remember(resource)
        return SQLiteTransaction(resource)

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise OutboxError(f"cannot {what}: the outbox {self._path!r} is closed")
            try:
                yield self._connection
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot {what} in {self._path!r}: {exc}") from exc

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._guard(what) as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._connection.close()


def _open(connection: sqlite3.Connection | None) -> bool:
    """Whether ``connection`` is still there, open, and usable from this thread."""
    if connection is None:
        return False
    try:
        connection.total_changes  # noqa: B018 - raises ProgrammingError once closed
    except sqlite3.ProgrammingError:
        return False
    return True
