"""SQLiteDeadLetterStore: dead letters in one SQLite table, shared by threads and processes."""

from __future__ import annotations

import builtins
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .._records import DeadLetter
from ..errors import ConfigurationError, DeadLetterStoreError
from ._memory import (
    _checked_id,
    _checked_lease,
    _checked_letter,
    _checked_limit,
    _checked_owner,
    _checked_purge,
    _checked_selection,
    _checked_update,
    _closed_error,
    _not_found,
    _not_held,
    _Selection,
)

__all__ = ["SQLiteDeadLetterStore"]

_TABLE = "eventbus_dead_letters"

# Every datetime is kept twice: as ISO-8601 text in UTC with its offset (exact, readable)
# and as REAL Unix seconds (``*_ts``), which filters and sorts. The REAL value is the
# correctly rounded quotient of whole microseconds, so it keeps microsecond order and
# equality for dates between the years 1698 and 2242.
_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
    id TEXT NOT NULL PRIMARY KEY,
    envelope_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    handler TEXT NOT NULL,
    error_type TEXT NOT NULL,
    message TEXT NOT NULL,
    traceback TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    first_failed_at TEXT NOT NULL,
    first_failed_ts REAL NOT NULL,
    last_failed_at TEXT NOT NULL,
    last_failed_ts REAL NOT NULL,
    payload BLOB NOT NULL,
    claim_owner TEXT NULL,
    claim_until REAL NULL
)""",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_handler ON {_TABLE} (handler, last_failed_ts)",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_event_name ON {_TABLE} (event_name, last_failed_ts)",
    f"CREATE INDEX IF NOT EXISTS {_TABLE}_last_failed ON {_TABLE} (last_failed_ts, id)",
)
_COLUMNS = (
    "id",
    "envelope_id",
    "event_name",
    "handler",
    "error_type",
    "message",
    "traceback",
    "attempts",
    "first_failed_at",
    "first_failed_ts",
    "last_failed_at",
    "last_failed_ts",
    "payload",
    "claim_owner",
    "claim_until",
)
_LETTER_COLUMNS = (
    "id, envelope_id, event_name, handler, error_type, message, traceback, attempts, "
    "first_failed_at, last_failed_at, payload"
)
# A claim is held while claim_until >= now; it expires once claim_until < now.
_UNCLAIMED = "(claim_owner IS NULL OR claim_until < ?)"
# SQLite before 3.32 allows 999 bound parameters per statement.
_IDS_PER_STATEMENT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _unix(moment: datetime) -> float:
    """Unix seconds of an aware datetime, rounded once from whole microseconds."""
    return ((moment - _EPOCH) // _MICROSECOND) / 1_000_000


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.utcoffset() is None:
        raise ValueError(f"the datetime {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def _where(selection: _Selection) -> tuple[builtins.list[str], builtins.list[Any]]:
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    if selection.handler is not None:
        clauses.append("handler = ?")
        params.append(selection.handler)
    if selection.event_name is not None:
        clauses.append("event_name = ?")
        params.append(selection.event_name)
    if selection.since is not None:
        clauses.append("last_failed_ts >= ?")
        params.append(_unix(selection.since))
    if selection.until is not None:
        clauses.append("last_failed_ts <= ?")
        params.append(_unix(selection.until))
    return clauses, params


def _sql_where(clauses: builtins.list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


class SQLiteDeadLetterStore:
    """Dead letters in the table ``eventbus_dead_letters`` of a SQLite file.

    The table and its indexes are created on open (``schema_sql()`` gives the DDL for
    those who manage migrations themselves); a missing parent directory is created.
    ``":memory:"`` keeps the letters in memory, for tests. Threads and processes may
    share one file: every write is a ``BEGIN IMMEDIATE`` transaction, and a writer waits
    up to ``timeout`` seconds for another one before failing. ``clock`` gives the time in
    seconds that claim leases are measured against (every process sharing the file must
    use the same clock, as the host's ``time.time`` is).

    Durability: a file is in WAL mode with ``synchronous=NORMAL``, which survives a crash
    of the process but not a power loss or an OS crash (the last commits may be lost).
    Keep the file on a local disk: WAL relies on shared memory that network file systems
    do not provide.

    Every failure of SQLite is raised as ``DeadLetterStoreError``, naming the operation
    and chaining the cause.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = os.fspath(path)
        if not isinstance(self._path, str):
            raise ConfigurationError(f"path must be a str or a PathLike of str, got {path!r}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ConfigurationError(
                f"timeout must be a finite number of seconds >= 0, got {timeout!r}"
            )
        self._timeout = float(timeout)
        self._clock = clock
        # One connection, guarded by one lock, shared by every thread (check_same_thread
        # off). Writers serialise in SQLite anyway, and dead letters are not a hot path;
        # one connection lets close() close everything from any thread, and is what
        # ":memory:" needs (each connection there would be a separate, empty database).
        # Concurrency between processes (or several stores on one file) is SQLite's:
        # BEGIN IMMEDIATE plus busy_timeout.
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = self._open()

    @classmethod
    def schema_sql(cls) -> str:
        """The DDL of the table and its indexes, for migration tools (idempotent)."""
        return "".join(f"{statement};\n" for statement in _DDL)

    def __repr__(self) -> str:
        state = " closed" if self._conn is None else ""
        return f"<SQLiteDeadLetterStore {self._path!r}{state}>"

    # -- opening, transactions, errors -------------------------------------------------

    def _unusable(self, cause: object) -> DeadLetterStoreError:
        return DeadLetterStoreError(f"cannot keep dead letters in {self._path!r}: {cause}")

    def _open(self) -> sqlite3.Connection:
        path = self._path
        in_memory = path == ":memory:"
        if not in_memory:
            if not path:
                raise self._unusable("an empty path names no file")
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._unusable(f"cannot create its directory ({exc})") from exc
            if Path(path).is_dir():
                raise self._unusable("it is a directory")
        try:
            conn = sqlite3.connect(
                path, timeout=self._timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unusable(f"{type(exc).__name__}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {round(self._timeout * 1000)}")
            if not in_memory:
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_DDL[0])
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({_TABLE})")}
            missing = [column for column in _COLUMNS if column not in present]
            if not missing:
                for statement in _DDL[1:]:
                    conn.execute(statement)
            conn.execute("ROLLBACK" if missing else "COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise self._unusable(f"{type(exc).__name__}: {exc}") from exc
        if missing:
            conn.close()
            raise self._unusable(
                f"its table {_TABLE} lacks the columns {', '.join(missing)}; "
                "compare it with SQLiteDeadLetterStore.schema_sql()"
            )
        return conn

    def _failure(self, operation: str, exc: sqlite3.Error) -> DeadLetterStoreError:
        return DeadLetterStoreError(
            f"dead-letter store {self._path!r}: {operation} failed: {type(exc).__name__}: {exc}"
        )

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise _closed_error(self)
        return self._conn

    @contextmanager
    def _reading(self, operation: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._live()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._failure(operation, exc) from exc

    @contextmanager
    def _writing(self, operation: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on any error."""
        with self._lock:
            conn = self._live()
            try:
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._roll_back(conn)
                raise self._failure(operation, exc) from exc
            except BaseException:
                self._roll_back(conn)
                raise

    @staticmethod
    def _roll_back(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _letter(self, row: tuple[Any, ...], operation: str) -> DeadLetter:
        try:
            return DeadLetter(
                id=uuid.UUID(row[0]),
                envelope_id=uuid.UUID(row[1]),
                event_name=row[2],
                handler=row[3],
                error_type=row[4],
                message=row[5],
                traceback=row[6],
                attempts=row[7],
                first_failed_at=_parse_time(row[8]),
                last_failed_at=_parse_time(row[9]),
                payload=bytes(row[10]),
            )
        except (TypeError, ValueError) as exc:
            raise DeadLetterStoreError(
                f"dead-letter store {self._path!r}: {operation} read a corrupt row "
                f"(id {row[0]!r}): {exc}"
            ) from exc

    def _fetch(self, conn: sqlite3.Connection, letter_id: uuid.UUID) -> DeadLetter | None:
        row = conn.execute(
            f"SELECT {_LETTER_COLUMNS} FROM {_TABLE} WHERE id = ?",  # noqa: S608 - constants
            (str(letter_id),),
        ).fetchone()
        return None if row is None else self._letter(row, "get")

    def _holder(self, conn: sqlite3.Connection, letter_id: uuid.UUID) -> tuple[bool, str | None]:
        """Whether the letter exists, and who holds its claim."""
        row = conn.execute(
            f"SELECT claim_owner FROM {_TABLE} WHERE id = ?",  # noqa: S608 - constants
            (str(letter_id),),
        ).fetchone()
        return (False, None) if row is None else (True, row[0])

    # -- the DeadLetterStore protocol --------------------------------------------------

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``; a letter with the same id already kept is an error."""
        letter = _checked_letter(letter)
        with self._writing("add") as conn:
            if self._holder(conn, letter.id)[0]:
                raise DeadLetterStoreError(
                    f"a dead letter with the id {letter.id} is already stored; "
                    "letters are never overwritten"
                )
            conn.execute(
                f"INSERT INTO {_TABLE} ({', '.join(_COLUMNS)}) "  # noqa: S608 - constants
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                (
                    str(letter.id),
                    str(letter.envelope_id),
                    letter.event_name,
                    letter.handler,
                    letter.error_type,
                    letter.message,
                    letter.traceback,
                    letter.attempts,
                    _iso(letter.first_failed_at),
                    _unix(letter.first_failed_at),
                    _iso(letter.last_failed_at),
                    _unix(letter.last_failed_at),
                    letter.payload,
                    None,
                    None,
                ),
            )

    def get(self, letter_id: uuid.UUID) -> DeadLetter:
        """The letter with this id (DeadLetterNotFoundError if there is none)."""
        letter_id = _checked_id(letter_id)
        with self._reading("get") as conn:
            letter = self._fetch(conn, letter_id)
        if letter is None:
            raise _not_found(letter_id)
        return letter

    def list(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> builtins.list[DeadLetter]:
        """The letters that match, oldest ``last_failed_at`` first (then by id)."""
        clauses, params = _where(_checked_selection(handler, event_name, since, until))
        limit = _checked_limit(limit)
        sql = (
            f"SELECT {_LETTER_COLUMNS} FROM {_TABLE}{_sql_where(clauses)} "  # noqa: S608
            "ORDER BY last_failed_ts, id"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reading("list") as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._letter(row, "list") for row in rows]

    def count(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """How many letters match."""
        clauses, params = _where(_checked_selection(handler, event_name, since, until))
        sql = f"SELECT count(*) FROM {_TABLE}{_sql_where(clauses)}"  # noqa: S608 - constants
        with self._reading("count") as conn:
            (total,) = conn.execute(sql, params).fetchone()
        return int(total)

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None:
        """Claim the letter for ``owner`` for ``lease`` seconds and return it.

        None if another owner holds an unexpired claim. The same owner renews its claim;
        an expired claim is taken over. One UPDATE decides, so of concurrent claimants in
        any number of threads or processes exactly one wins.
        """
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        lease = _checked_lease(lease)
        with self._writing("claim") as conn:
            now = self._clock()
            won = conn.execute(
                f"UPDATE {_TABLE} SET claim_owner = ?, claim_until = ? "  # noqa: S608
                "WHERE id = ? AND (claim_owner IS NULL OR claim_owner = ? OR claim_until < ?)",
                (owner, now + lease, str(letter_id), owner, now),
            ).rowcount
            letter = self._fetch(conn, letter_id)
        if letter is None:
            raise _not_found(letter_id)
        return letter if won else None

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool:
        """Delete the letter if ``owner`` holds its claim; whether it was deleted."""
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        with self._writing("resolve") as conn:
            deleted = conn.execute(
                f"DELETE FROM {_TABLE} WHERE id = ? AND claim_owner = ?",  # noqa: S608
                (str(letter_id), owner),
            ).rowcount
        return deleted > 0

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None:
        """Give up ``owner``'s claim, storing ``updated``'s error and attempts if given.

        DeadLetterStoreError if ``owner`` does not hold the claim (any more).
        """
        letter_id = _checked_id(letter_id)
        owner = _checked_owner(owner)
        new = None if updated is None else _checked_update(letter_id, updated)
        sets = "claim_owner = NULL, claim_until = NULL"
        params: builtins.list[Any] = []
        if new is not None:
            sets += (
                ", error_type = ?, message = ?, traceback = ?, attempts = ?, "
                "last_failed_at = ?, last_failed_ts = ?"
            )
            params += [
                new.error_type,
                new.message,
                new.traceback,
                new.attempts,
                _iso(new.last_failed_at),
                _unix(new.last_failed_at),
            ]
        with self._writing("release") as conn:
            changed = conn.execute(
                f"UPDATE {_TABLE} SET {sets} WHERE id = ? AND claim_owner = ?",  # noqa: S608
                (*params, str(letter_id), owner),
            ).rowcount
            if not changed:
                exists, holder = self._holder(conn, letter_id)
                if not exists:
                    raise _not_found(letter_id)
                raise _not_held(letter_id, owner, holder)

    def purge(
        self,
        *,
        letter_ids: Iterable[uuid.UUID] | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all: bool = False,  # noqa: A002 - purge(all=True) reads as what it does
    ) -> int:
        """Delete the letters with these ids *and* matching these filters, or ``all``.

        A letter under an unexpired claim is never deleted. Returns how many were.
        """
        selection = _checked_selection(handler, event_name, since, until)
        ids = _checked_purge(letter_ids, selection, everything=all)
        clauses, params = _where(selection)
        deleted = 0
        with self._writing("purge") as conn:
            clauses.append(_UNCLAIMED)
            params.append(self._clock())
            if ids is None:
                sql = f"DELETE FROM {_TABLE}{_sql_where(clauses)}"  # noqa: S608 - constants
                return int(conn.execute(sql, params).rowcount)
            ordered = sorted(str(letter_id) for letter_id in ids)
            for start in range(0, len(ordered), _IDS_PER_STATEMENT):
                chunk = ordered[start : start + _IDS_PER_STATEMENT]
                marks = ", ".join("?" for _ in chunk)
                sql = f"DELETE FROM {_TABLE}{_sql_where([f'id IN ({marks})', *clauses])}"  # noqa: S608
                deleted += conn.execute(sql, [*chunk, *params]).rowcount
        return deleted

    def close(self) -> None:
        """Close the connection; the store can no longer be used. Closing twice is fine."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._failure("close", exc) from exc
