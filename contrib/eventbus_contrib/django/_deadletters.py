"""``DjangoDeadLetterStore``: dead letters in a table of a Django database, which every
process of the application (and ``eventbus dlq``) sees.

Mirrors ``eventbus.SQLiteDeadLetterStore`` column for column: every datetime is kept as
ISO-8601 text in UTC (exact, readable) and as unix seconds (``*_ts``: filters and
order), payloads as bytes. A replay claims a letter under a lease measured against
``clock`` (every process sharing the table must use the same clock, as the hosts'
``time.time`` is); one UPDATE decides a claim, so of concurrent replayers in any number
of threads, processes or hosts exactly one wins.
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from django.db import IntegrityError

from ._connection import OwnConnection, check_alias, statements_of
from ._core import ConfigurationError, DeadLetter, DeadLetterStoreError, checks
from ._sql import DEAD_LETTERS, Statements

__all__ = ["DjangoDeadLetterStore"]

_TABLE: Final = DEAD_LETTERS
_COLUMNS: Final = (
    "id, envelope_id, event_name, handler, error_type, message, traceback, attempts, "
    "first_failed_at, first_failed_ts, last_failed_at, last_failed_ts, payload, "
    "claim_owner, claim_until"
)
_LETTER_COLUMNS: Final = (
    "id, envelope_id, event_name, handler, error_type, message, traceback, attempts, "
    "first_failed_at, last_failed_at, payload"
)
_UNCLAIMED: Final = "(claim_owner IS NULL OR claim_until < %s)"
_IDS_PER_STATEMENT: Final = 500
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


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


def _where(selection: checks.Selection) -> tuple[builtins.list[str], builtins.list[Any]]:
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    if selection.handler is not None:
        clauses.append("handler = %s")
        params.append(selection.handler)
    if selection.event_name is not None:
        clauses.append("event_name = %s")
        params.append(selection.event_name)
    if selection.since is not None:
        clauses.append("last_failed_ts >= %s")
        params.append(_unix(selection.since))
    if selection.until is not None:
        clauses.append("last_failed_ts <= %s")
        params.append(_unix(selection.until))
    return clauses, params


def _sql_where(clauses: builtins.list[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


class DjangoDeadLetterStore:
    """Dead letters in the table ``eventbus_dead_letters`` of the Django database
    ``using`` (SQLite or PostgreSQL), created by the app's migration.

    Its work runs on a connection of its own, in short transactions. Every database
    failure is raised as ``DeadLetterStoreError``, naming the operation and chaining the
    cause. ``close()`` closes that connection; the store can no longer be used.
    """

    def __init__(self, using: str = "default", *, clock: Callable[[], float] = time.time) -> None:
        self.alias = check_alias(using, "DjangoDeadLetterStore")
        if not callable(clock):
            raise ConfigurationError(f"clock must be a callable giving seconds, got {clock!r}")
        self._clock = clock
        self._sql: Statements = statements_of(self.alias, "DjangoDeadLetterStore")
        self._own = OwnConnection(self.alias, failure=self._failure, closed=self._closed)

    def __repr__(self) -> str:
        state = " closed" if self._own.closed else ""
        return f"<DjangoDeadLetterStore {self.alias!r}{state}>"

    def _failure(self, operation: str, error: BaseException) -> DeadLetterStoreError:
        hint = ""
        if _TABLE in str(error):
            hint = " (are the migrations applied? manage.py migrate eventbus)"
        return DeadLetterStoreError(
            f"dead-letter store {self.alias!r}: {operation} failed: "
            f"{type(error).__name__}: {error}{hint}"
        )

    def _closed(self, operation: str) -> DeadLetterStoreError:
        del operation
        return checks.closed_error(self)

    @contextmanager
    def _reading(self, operation: str) -> Iterator[Any]:
        with self._own.cursor(operation, transaction=False, statements=self._sql) as cursor:
            yield cursor

    @contextmanager
    def _writing(self, operation: str) -> Iterator[Any]:
        with self._own.cursor(operation, transaction=True, statements=self._sql) as cursor:
            yield cursor

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
                attempts=int(row[7]),
                first_failed_at=_parse_time(row[8]),
                last_failed_at=_parse_time(row[9]),
                payload=bytes(row[10]),
            )
        except (TypeError, ValueError) as exc:
            raise DeadLetterStoreError(
                f"dead-letter store {self.alias!r}: {operation} read a corrupt row "
                f"(id {row[0]!r}): {exc}"
            ) from exc

    def _fetch(self, cursor: Any, letter_id: uuid.UUID) -> DeadLetter | None:
        cursor.execute(
            f"SELECT {_LETTER_COLUMNS} FROM {_TABLE} WHERE id = %s",  # noqa: S608 - constants
            [str(letter_id)],
        )
        row = cursor.fetchone()
        return None if row is None else self._letter(row, "get")

    def _holder(self, cursor: Any, letter_id: uuid.UUID) -> tuple[bool, str | None]:
        """Whether the letter exists, and who holds its claim."""
        cursor.execute(
            f"SELECT claim_owner FROM {_TABLE} WHERE id = %s",  # noqa: S608 - constants
            [str(letter_id)],
        )
        row = cursor.fetchone()
        return (False, None) if row is None else (True, row[0])

    # -- the DeadLetterStore protocol --------------------------------------------------

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``; a letter with the same id already kept is an error."""
        letter = checks.check_letter(letter)
        marks = ", ".join(["%s"] * 15)
        try:
            with self._writing("add") as cursor:
                cursor.execute(
                    f"INSERT INTO {_TABLE} ({_COLUMNS}) VALUES ({marks})",  # noqa: S608
                    [
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
                    ],
                )
        except DeadLetterStoreError as error:
            if isinstance(error.__cause__, IntegrityError) and self._exists(letter.id):
                raise DeadLetterStoreError(
                    f"a dead letter with the id {letter.id} is already stored; "
                    "letters are never overwritten"
                ) from error
            raise

    def _exists(self, letter_id: uuid.UUID) -> bool:
        with self._reading("add") as cursor:
            return self._holder(cursor, letter_id)[0]

    def get(self, letter_id: uuid.UUID) -> DeadLetter:
        """The letter with this id (DeadLetterNotFoundError if there is none)."""
        letter_id = checks.check_id(letter_id)
        with self._reading("get") as cursor:
            letter = self._fetch(cursor, letter_id)
        if letter is None:
            raise checks.not_found(letter_id)
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
        clauses, params = _where(checks.check_selection(handler, event_name, since, until))
        limit = checks.check_limit(limit)
        sql = (
            f"SELECT {_LETTER_COLUMNS} FROM {_TABLE}{_sql_where(clauses)} "  # noqa: S608
            "ORDER BY last_failed_ts, id"
        )
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        with self._reading("list") as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
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
        clauses, params = _where(checks.check_selection(handler, event_name, since, until))
        sql = f"SELECT count(*) FROM {_TABLE}{_sql_where(clauses)}"  # noqa: S608 - constants
        with self._reading("count") as cursor:
            cursor.execute(sql, params)
            (total,) = cursor.fetchone()
        return int(total)

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None:
        """Claim the letter for ``owner`` for ``lease`` seconds and return it.

        None if another owner holds an unexpired claim. The same owner renews its claim;
        an expired claim is taken over. One UPDATE decides.
        """
        letter_id = checks.check_id(letter_id)
        owner = checks.check_owner(owner)
        lease = checks.check_lease(lease)
        with self._writing("claim") as cursor:
            now = self._clock()
            cursor.execute(
                f"UPDATE {_TABLE} SET claim_owner = %s, claim_until = %s "  # noqa: S608
                "WHERE id = %s AND (claim_owner IS NULL OR claim_owner = %s OR claim_until < %s)",
                [owner, now + lease, str(letter_id), owner, now],
            )
            won = cursor.rowcount
            letter = self._fetch(cursor, letter_id)
        if letter is None:
            raise checks.not_found(letter_id)
        return letter if won else None

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool:
        """Delete the letter if ``owner`` holds its claim; whether it was deleted."""
        letter_id = checks.check_id(letter_id)
        owner = checks.check_owner(owner)
        with self._writing("resolve") as cursor:
            cursor.execute(
                f"DELETE FROM {_TABLE} WHERE id = %s AND claim_owner = %s",  # noqa: S608
                [str(letter_id), owner],
            )
            return bool(cursor.rowcount > 0)

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None:
        """Give up ``owner``'s claim, storing ``updated``'s error and attempts if given.

        DeadLetterStoreError if ``owner`` does not hold the claim (any more).
        """
        letter_id = checks.check_id(letter_id)
        owner = checks.check_owner(owner)
        new = None if updated is None else checks.check_update(letter_id, updated)
        sets = "claim_owner = NULL, claim_until = NULL"
        params: builtins.list[Any] = []
        if new is not None:
            sets += (
                ", error_type = %s, message = %s, traceback = %s, attempts = %s, "
                "last_failed_at = %s, last_failed_ts = %s"
            )
            params += [
                new.error_type,
                new.message,
                new.traceback,
                new.attempts,
                _iso(new.last_failed_at),
                _unix(new.last_failed_at),
            ]
        with self._writing("release") as cursor:
            cursor.execute(
                f"UPDATE {_TABLE} SET {sets} WHERE id = %s AND claim_owner = %s",  # noqa: S608
                [*params, str(letter_id), owner],
            )
            if cursor.rowcount:
                return
            exists, holder = self._holder(cursor, letter_id)
        if not exists:
            raise checks.not_found(letter_id)
        raise checks.not_held(letter_id, owner, holder)

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
        selection = checks.check_selection(handler, event_name, since, until)
        ids = checks.check_purge(letter_ids, selection, everything=all)
        clauses, params = _where(selection)
        deleted = 0
        with self._writing("purge") as cursor:
            clauses.append(_UNCLAIMED)
            params.append(self._clock())
            if ids is None:
                cursor.execute(f"DELETE FROM {_TABLE}{_sql_where(clauses)}", params)  # noqa: S608
                return int(cursor.rowcount)
            ordered = sorted(str(letter_id) for letter_id in ids)
            for start in range(0, len(ordered), _IDS_PER_STATEMENT):
                chunk = ordered[start : start + _IDS_PER_STATEMENT]
                marks = ", ".join(["%s"] * len(chunk))
                sql = f"DELETE FROM {_TABLE}{_sql_where([f'id IN ({marks})', *clauses])}"  # noqa: S608
                cursor.execute(sql, [*chunk, *params])
                deleted += cursor.rowcount
        return deleted

    def close(self) -> None:
        """Close the store's connection; it can no longer be used. Closing twice is fine."""
        self._own.close()
