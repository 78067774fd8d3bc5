"""``DjangoOutbox``: the transactional outbox in a database of Django's ``DATABASES``.

Rows are written through Django's own connection, in the application's transaction:
inside ``transaction.atomic()`` a publish joins it with no ``bus.transaction()``
(``ambient_transaction``), its rows written at once in the innermost atomic block. The
relay's work runs on a connection of the store's own (``OwnConnection``), in short
transactions fenced by its lease owner. The tables come from the app's migration.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from django.core.management import call_command
from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy

from ._connection import OwnConnection, application_connection, check_alias, statements_of
from ._core import ClaimedRow, ConfigurationError, OutboxError, OutboxStatus, PendingRow, redact
from ._listen import listen
from ._sql import INBOX, OUTBOX, Statements
from ._transactions import DjangoTransaction, ambient

__all__ = ["DjangoOutbox"]

_CHUNK_BYTES: Final = 2 * 1024 * 1024
"""A multi-row INSERT carries at most this many payload bytes."""
_ERROR_LENGTH: Final = 2000
_APP_LABEL: Final = "eventbus"


class DjangoOutbox:
    """The outbox and inbox tables (``eventbus_outbox``, ``eventbus_inbox``) in the
    Django database ``using``, on SQLite or PostgreSQL.

    Implements ``eventbus.typing.OutboxStore``. Durable handlers that take a
    ``django.db.backends.base.base.BaseDatabaseWrapper`` run in a transaction of their
    own (``transaction.atomic``) with their inbox mark: their ORM writes to this database
    and the mark commit together. Nothing touches the database until it is used, so it
    may be made while Django starts. ``close()`` closes the store's own connection.
    """

    resource_type: type[Any] = BaseDatabaseWrapper

    def __init__(
        self,
        using: str = "default",
        *,
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        notify: bool = True,
    ) -> None:
        """Use the outbox tables in the database ``using`` (created by ``manage.py
        migrate``). ``batch``, ``lease`` and ``poll_interval`` set how it is relayed:
        rows claimed at once, seconds a relay holds a claim before another may take it
        over (renewed while a handler runs), and seconds between polls when no commit
        woke the relay.

        ``notify`` (PostgreSQL): each write also sends ``NOTIFY`` at its commit, which
        wakes relays in other processes (``manage.py eventbus relay``) at once. Polling
        stays what makes delivery correct: notifications are lost while nobody listens
        and do not pass PgBouncer in transaction mode; turn them off there, or to spare
        the commit its notification lock. SQLite has no notifications: a relay in
        another process finds the rows at its next poll."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")
        for name, number in (("lease", lease), ("poll_interval", poll_interval)):
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not (number > 0 and math.isfinite(number))
            ):
                raise ConfigurationError(f"{name} must be > 0 seconds, got {number!r}")
        self.alias = check_alias(using, "DjangoOutbox")
        self.batch = batch
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        if not isinstance(notify, bool):
            raise ConfigurationError(f"notify must be True or False, got {notify!r}")
        self._sql: Statements = statements_of(self.alias, "DjangoOutbox")
        self.notify = notify and self._sql.channel is not None
        self._own = OwnConnection(self.alias, failure=self._failure, closed=self._closed)

    def __repr__(self) -> str:
        return f"DjangoOutbox({self.alias!r})"

    def _failure(self, what: str, error: BaseException) -> OutboxError:
        reason = f"{type(error).__name__}: {error}"
        if "eventbus_outbox" in str(error) or "eventbus_inbox" in str(error):
            reason += " (are the migrations applied? manage.py migrate eventbus)"
        return OutboxError(f"cannot {what} in the database {self.alias!r}: {redact(reason)}")

    def _closed(self, what: str) -> OutboxError:
        return OutboxError(f"cannot {what}: the outbox {self!r} is closed")

    @contextmanager
    def _own_cursor(self, what: str, *, transaction: bool = True) -> Iterator[Any]:
        with self._own.cursor(what, transaction=transaction, statements=self._sql) as cursor:
            yield cursor

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Errors on the application's connection become OutboxErrors."""
        if self._own.closed:
            raise self._closed(what)
        try:
            yield
        except DatabaseError as error:
            raise self._failure(what, error) from error

    # -- the schema: Django's migration --------------------------------------------------

    def create_schema(self) -> None:
        """Apply the app's migration to this database (``manage.py migrate eventbus``)."""
        if self._own.closed:
            raise self._closed("create the outbox tables")
        call_command("migrate", _APP_LABEL, database=self.alias, verbosity=0)

    def schema_sql(self) -> str:
        """The DDL of the app's migration for this database (``manage.py sqlmigrate``)."""
        from io import StringIO  # noqa: PLC0415 - only the DDL printer needs it

        from django.db.migrations.loader import MigrationLoader  # noqa: PLC0415

        loader = MigrationLoader(connections[self.alias], ignore_no_migrations=True)
        text = StringIO()
        for label, name in sorted(loader.disk_migrations):
            if label == _APP_LABEL:
                call_command("sqlmigrate", label, name, database=self.alias, stdout=text)
        return text.getvalue()

    # -- the publisher's side ----------------------------------------------------------

    def write(self, connection: Any, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` through the application's Django connection, in its
        transaction: one multi-row INSERT (split only when very large, then all in one
        savepoint, so a failure leaves none of them)."""
        with self._guard("write to the outbox"):
            connection = application_connection(connection, self.alias, "DjangoOutbox.write")
            chunks = list(self._chunks(rows))
            if len(chunks) <= 1:
                self._insert(connection, chunks)
                return
            savepoint = connection.savepoint()
            try:
                self._insert(connection, chunks)
            except BaseException:
                if savepoint is not None:
                    connection.savepoint_rollback(savepoint)
                raise
            if savepoint is not None:
                connection.savepoint_commit(savepoint)

    def _insert(self, connection: Any, chunks: list[Sequence[PendingRow]]) -> None:
        with connection.cursor() as cursor:
            for chunk in chunks:
                cursor.execute(self._sql.insert(len(chunk), notify=self.notify), _parameters(chunk))

    def _chunks(self, rows: Sequence[PendingRow]) -> Iterator[Sequence[PendingRow]]:
        most = self._sql.max_parameters // 5
        start, size = 0, 0
        for index, row in enumerate(rows):
            if index > start and (index - start >= most or size + len(row.payload) > _CHUNK_BYTES):
                yield rows[start:index]
                start, size = index, 0
            size += len(row.payload)
        if start < len(rows):
            yield rows[start:]

    def write_now(self, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` in a transaction of their own (a publish outside any
        transaction: Django in autocommit), on the store's own connection."""
        chunks = list(self._chunks(rows))
        with self._own_cursor("write to the outbox") as cursor:
            for chunk in chunks:
                cursor.execute(self._sql.insert(len(chunk), notify=self.notify), _parameters(chunk))

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever outbox rows commit anywhere, in another process too
        (PostgreSQL ``LISTEN``, on a connection of its own); returns how to stop. None on
        SQLite, which has no notifications (or with ``notify=False``): the relay then
        polls every ``poll_interval``. A dropped listening connection is opened again
        after a pause; meanwhile polling carries on."""
        channel = self._sql.channel
        if not self.notify or channel is None:
            return None
        if self._own.closed:
            raise self._closed("listen for commits")
        return listen(self.alias, channel, wake, pause=self.poll_interval)

    def ambient_transaction(self) -> object | None:
        """This thread's connection to the outbox's database while it has a transaction
        open (``transaction.atomic()``), which a durable or after-commit publish joins."""
        found: object | None = ambient(self.alias)
        return found

    def transaction_control(self, resource: object) -> DjangoTransaction | None:
        """How ``bus.transaction()`` drives this thread's Django connection: an atomic
        block (nested ones for savepoints). None for anything that is not a Django
        connection; another database's, or another thread's, is refused."""
        if not isinstance(resource, BaseDatabaseWrapper | ConnectionProxy):
            return None
        application_connection(resource, self.alias, "bus.transaction()")
        if isinstance(resource, BaseDatabaseWrapper) and resource is not connections[self.alias]:
            raise ConfigurationError(
                "bus.transaction() drives the current thread's Django connection "
                f"(django.db.connection, or connections[{self.alias!r}]); this one was made "
                "apart from it, and transaction.atomic() cannot act on it"
            )
        return DjangoTransaction(self.alias)

    # -- the relay's side --------------------------------------------------------------

    def claim(self, *, owner: str, batch: int, lease: float) -> list[ClaimedRow]:
        """Lease up to ``batch`` available rows, oldest first, at most one per key (each
        saying whether its destination's inbox holds its envelope already)."""
        sql = self._sql
        with self._own_cursor("claim outbox rows") as cursor:
            for statement in sql.claim_prelude:
                cursor.execute(statement)
            cursor.execute(sql.claim(), sql.claim_parameters(owner, float(lease), batch))
            found = cursor.fetchall()
        rows = [
            ClaimedRow(
                id=int(row[0]),
                envelope_id=uuid.UUID(row[1]),
                name=row[2],
                destination=row[3],
                key=row[4],
                payload=bytes(row[5]),
                attempts=int(row[6]),
                created_at=float(row[7]),
                first_failed_at=None if row[8] is None else float(row[8]),
                seen=bool(row[9]),
            )
            for row in found
        ]
        rows.sort(key=lambda row: row.id)
        return rows

    def complete(
        self,
        ids: Iterable[int],
        *,
        owner: str,
        processed: Sequence[tuple[str, uuid.UUID]] = (),
    ) -> int:
        """Delete delivered rows that ``owner`` still holds; returns how many. The inbox
        marks of ``processed`` are written in the same transaction (in a fixed order, so
        two relays marking the same pairs cannot deadlock), even when the fence deletes
        no row: those handlers did run."""
        ids = [int(row_id) for row_id in ids]
        if not ids:
            return 0
        pairs = sorted(
            {(handler, str(uuid.UUID(str(envelope_id)))) for handler, envelope_id in processed}
        )
        sql = self._sql
        deleted = 0
        with self._own_cursor("complete outbox rows") as cursor:
            if pairs:
                cursor.executemany(sql.mark(), pairs)
            most = sql.max_parameters - 1
            for start in range(0, len(ids), most):
                chunk = ids[start : start + most]
                cursor.execute(sql.delete_completed(len(chunk)), [owner, *chunk])
                deleted += cursor.rowcount
        return deleted

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool:
        """Put a failed row back, available again in ``delay`` seconds (fenced); the first
        reschedule stamps ``first_failed_at``, later ones keep it."""
        with self._own_cursor("reschedule an outbox row") as cursor:
            cursor.execute(
                self._sql.reschedule(),
                [attempts, float(delay), redact(error)[:_ERROR_LENGTH], row_id, owner],
            )
            return bool(cursor.rowcount == 1)

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int:
        """Extend the lease of rows still being delivered."""
        ids = [int(row_id) for row_id in ids]
        if not ids:
            return 0
        with self._own_cursor("renew outbox leases") as cursor:
            cursor.execute(self._sql.renew(len(ids)), [float(lease), owner, *ids])
            return int(cursor.rowcount)

    def status(self) -> OutboxStatus:
        """Counts and ages, for operators."""
        with self._own_cursor("read the outbox status", transaction=False) as cursor:
            cursor.execute(self._sql.status())
            total, in_flight, delayed, oldest = cursor.fetchone()
            cursor.execute(self._sql.by_name)
            by_name = {name: int(count) for name, count in cursor.fetchall()}
        return OutboxStatus(
            pending=int(total),
            in_flight=int(in_flight or 0),
            delayed=int(delayed or 0),
            oldest_age=None if oldest is None else max(0.0, float(oldest)),
            by_name=by_name,
        )

    # -- the inbox -----------------------------------------------------------------------

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        """Whether ``handler`` already processed ``envelope_id``."""
        with self._own_cursor("read the inbox", transaction=False) as cursor:
            cursor.execute(self._sql.seen, [handler, str(envelope_id)])
            return cursor.fetchone() is not None

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        """Which of the (handler, envelope id) pairs the inbox already holds."""
        found: set[tuple[str, uuid.UUID]] = set()
        most = self._sql.max_parameters // 2
        with self._own_cursor("read the inbox", transaction=False) as cursor:
            for start in range(0, len(pairs), most):
                chunk = pairs[start : start + most]
                values = [v for handler, envelope_id in chunk for v in (handler, str(envelope_id))]
                cursor.execute(self._sql.seen_many(len(chunk)), values)
                found.update((handler, uuid.UUID(text)) for handler, text in cursor.fetchall())
        return found

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        """Record that ``handler`` processed ``envelope_id``; False if it already had.

        With ``connection`` (a Django connection to this database), the INSERT joins its
        open transaction (the handler's own writes), so effects and mark commit together.
        """
        values = [handler, str(envelope_id)]
        if connection is None:
            with self._own_cursor("write the inbox") as cursor:
                cursor.execute(self._sql.mark(), values)
                return bool(cursor.rowcount == 1)
        with self._guard("write the inbox"):
            connection = application_connection(connection, self.alias, "DjangoOutbox.mark")
            with connection.cursor() as cursor:
                cursor.execute(self._sql.mark(), values)
                return bool(cursor.rowcount == 1)

    @contextmanager
    def handler_transaction(self) -> Iterator[Any]:
        """This thread's connection to the outbox's database, in an atomic block of its own
        (durable: never a savepoint of another), for a durable handler that takes one:
        the handler's ORM writes and its inbox mark commit together.

        It runs on one of the bus's threads, so the connections it opens are treated as
        a request's are: closed after it when ``CONN_MAX_AGE`` says so (or broken).
        """
        if self._own.closed:
            raise self._closed("open a handler transaction")
        connection = connections[self.alias]
        # On the bus's threads, nothing else is open; in a test's own thread, inside its
        # transaction, closing a connection would break that transaction: leave it be.
        on_its_own = not connection.in_atomic_block
        if on_its_own:
            _close_old_connections()
        try:
            with transaction.atomic(using=self.alias, durable=True):
                yield connection
        finally:
            if on_its_own:
                _close_old_connections()

    def clear(self) -> None:
        """Delete every outbox row, in any state, and every inbox mark: for tests that
        share a database without ``TransactionTestCase`` emptying it."""
        with self._own_cursor("clear the outbox") as cursor:
            cursor.execute(f"DELETE FROM {OUTBOX}")  # noqa: S608 - constants
            cursor.execute(f"DELETE FROM {INBOX}")  # noqa: S608

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further work and close the store's own connection (the application's
        connections are Django's)."""
        self._own.close()


def _parameters(rows: Sequence[PendingRow]) -> list[object]:
    return [
        value
        for row in rows
        for value in (str(row.envelope_id), row.name, row.destination, row.key, row.payload)
    ]


def _close_old_connections() -> None:
    """Django's ``close_old_connections`` (what each request does at its start and end),
    sparing a connection inside an atomic block."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
