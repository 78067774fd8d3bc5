"""``SQLAlchemyOutbox``: the outbox store on a SQLAlchemy engine.

It keeps the store's promises (``eventbus.typing.OutboxStore``) in the terms every
database shares: rows written in the caller's transaction, the relay's short
transactions of its own, fenced by its lease owner, errors turned into ``OutboxError``
without the password. Whatever differs between databases, it asks its dialect object.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from ._controls import AsyncControl, ConnectionControl, SessionControl
from ._core import (
    ClaimedRow,
    ConfigurationError,
    OutboxError,
    OutboxStatus,
    PendingRow,
    redact,
)
from ._dialects import dialect_for
from ._driver import DriverConnection, driver_transaction, drives
from ._engine import driver_reason
from ._resources import Resources, asyncio_module, unscoped
from ._schema import OutboxSchema, outbox_tables
from ._tracking import watch_engine, watch_sessions

if TYPE_CHECKING:
    from ._core import AsyncTransactionControl, TransactionControl

__all__ = ["SQLAlchemyOutbox"]

_CHUNK_ROWS: Final = 500
_CHUNK_BYTES: Final = 2 * 1024 * 1024
"""A multi-row INSERT carries at most this many rows and payload bytes, well inside every
database's bound-parameter limit and MariaDB's default ``max_allowed_packet`` (16 MiB)."""

_ERROR_LENGTH: Final = 2000

_claimed_row = ClaimedRow.from_columns
_by_id = itemgetter(0)


_RACED_CREATION_WAIT = 10.0
"""Seconds a store that lost the race to create the tables waits for the winner to finish
them (on MariaDB each CREATE commits apart, so one table can be there before the other)."""


class SQLAlchemyOutbox:
    """The transactional outbox in the application's database, through a SQLAlchemy engine.

    Implements ``eventbus.typing.OutboxStore``. ``bus.transaction()`` takes a ``Session``
    or a ``Connection`` of this engine; ``bus.atransaction()`` an ``AsyncSession`` or an
    ``AsyncConnection`` of an async engine on the same database (not on SQLite yet).
    Durable handlers may take ``session: Session`` (their writes and their inbox mark
    commit together). ``close()`` leaves the engine, which is the application's, open.
    """

    resource_type: type[Any] = Session

    def __init__(
        self,
        engine: Engine,
        *,
        metadata: sa.MetaData | None = None,
        prefix: str = "eventbus",
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        create: bool = True,
        notify: bool = True,
    ) -> None:
        """Use the outbox tables on ``engine`` (by default creating them if missing).

        ``metadata``: the application's, to define the tables in (see ``outbox_tables``).
        ``batch``, ``lease`` and ``poll_interval`` set how it is relayed: rows claimed at
        once, seconds a relay holds a claim before another may take it over (renewed
        while a handler runs), and seconds between polls when no commit woke the relay.
        ``notify`` (PostgreSQL): a write also sends ``NOTIFY`` on commit, and relays
        ``LISTEN``, so a commit in any process wakes them at once. It only wakes them
        early: polling stays what makes delivery correct (notifications are lost while
        nobody listens, and do not pass PgBouncer in transaction mode). Turn it off
        there, or to spare the commit its notification lock.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")
        for name, number in (("lease", lease), ("poll_interval", poll_interval)):
            if not (number > 0 and math.isfinite(number)):
                raise ConfigurationError(f"{name} must be > 0 seconds, got {number!r}")
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                "SQLAlchemyOutbox takes a sqlalchemy.Engine (create_engine(...)), got "
                f"{type(engine).__qualname__}; async engines are not supported"
            )
        self.batch = batch
        self.lease = float(lease)
        self.poll_interval = float(poll_interval)
        self._engine = engine
        self._url = engine.url.render_as_string(hide_password=True)
        self._password = engine.url.password
        self._lock = threading.Lock()
        self._closed = False
        self._prefix = prefix
        self.outbox, self.inbox = outbox_tables(
            sa.MetaData() if metadata is None else metadata, prefix=prefix
        )
        self._dialect = dialect_for(engine, self.outbox, self.inbox)
        self._writer = self._dialect.writer
        self._reader = self._dialect.reader
        # So that a durable publish outside bus.transaction() while this thread holds a
        # transaction on this database is refused (open_transaction), and so that a
        # joined session's commit runs what waits for it.
        watch_sessions()
        watch_engine(engine)
        self._resources = Resources(engine, self.outbox, self._dialect)
        self._schema = OutboxSchema(engine, self.outbox, self.inbox, self._dialect)
        self._notifier = (
            self._dialect.notifier(engine, channel=f"{prefix}_outbox", url=self._url)
            if notify
            else None
        )
        # Statements built once, so SQLAlchemy compiles them once.
        now, inbox = self._dialect.now, self.inbox
        self._insert = sa.insert(self.outbox).values(created_at=now, available_at=now)
        self._seen = sa.select(inbox.c.handler, inbox.c.envelope_id).where(
            sa.tuple_(inbox.c.handler, inbox.c.envelope_id).in_(
                sa.bindparam("pairs", expanding=True)
            )
        )
        self._rendered: dict[Any, tuple[str, dict[str, Any]]] = {}
        """The relay's statements as rendered for the driver (``_driver``), by statement."""
        self._prepare(create=create)

    def __repr__(self) -> str:
        return f"SQLAlchemyOutbox({self._url!r}, prefix={self._prefix!r})"

    @property
    def engine(self) -> Engine:
        """The application's engine this outbox lives on."""
        return self._engine

    # -- the schema ----------------------------------------------------------------------

    def _prepare(self, *, create: bool) -> None:
        """Check the server can run the claim (and what else the database needs first);
        create the tables, or check they are up to date."""
        with self._guard("connect to the database"), self._engine.connect() as opened:
            self._dialect.prepare(opened.execution_options(isolation_level="AUTOCOMMIT"))
        if create:
            self._create()
        else:
            self._check_columns()

    def create_schema(self) -> None:
        """Create the outbox and inbox tables if they do not exist."""
        self._check_open("create the outbox tables")
        self._create()

    def schema_sql(self) -> str:
        """The DDL of both tables and their indexes for this engine's database, for
        applications that manage their own migrations (without Alembic)."""
        return self._schema.ddl()

    def migration_sql(self) -> str:
        """The statements that bring an outbox table of an earlier release up to date on
        this engine's database (for applications that manage their own migrations)."""
        return self._schema.migration()

    def _check_columns(self) -> None:
        """With ``create=False``: refuse an outbox table of an earlier release."""
        with self._guard("read the outbox schema"), self._engine.connect() as connection:
            missing = self._schema.missing_columns(connection)
        if missing:
            raise OutboxError(
                f"the outbox table {self.outbox.name} on {self._url} lacks the column(s) "
                f"{', '.join(missing)}, which this version of eventbus needs. Add them with "
                f"your migrations: {' '.join(self.migration_sql().split())} (or open "
                "SQLAlchemyOutbox with create=True, which adds them)"
            )

    def _create(self) -> None:
        """Create the tables unless they exist, also when processes start together.

        ``create_all`` looks, then creates: two processes opening the outbox at once on a
        fresh database both look, and all but one fail. Where the database has a schema
        lock (PostgreSQL's advisory lock) they take turns on it; elsewhere a failed
        creation is forgiven when, looking again, the tables are there (another process
        made them). MariaDB commits each CREATE on its own, so the winner may still be
        making the second table: while one of the two is there, look again for a while.
        """
        try:
            with self._guard("create the outbox tables"), self._writer.begin() as connection:
                self._schema.create(connection)
        except OutboxError:
            deadline = time.monotonic() + _RACED_CREATION_WAIT
            while True:
                with self._writer.connect() as connection:
                    if self._schema.complete(connection):
                        return
                    begun = self._schema.begun(connection)
                if not begun or time.monotonic() > deadline:
                    raise  # not a creation that raced another process's: a real failure
                time.sleep(0.05)

    # -- the publisher's side ----------------------------------------------------------

    def write(self, connection: Any, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` through the application's ``Session`` or ``Connection``, in its
        transaction: one multi-row INSERT (split only when very large)."""
        self._check_open("write to the outbox")
        with self._guard("write to the outbox"):
            joined = self._resources.joined(connection, "write to the outbox")
            if not rows:
                return
            for chunk in _chunks(rows):
                joined.execute(*self._insert_of(chunk))

    async def awrite(self, resource: Any, rows: Sequence[PendingRow]) -> None:
        """``write`` through the application's ``AsyncSession`` or ``AsyncConnection``, in
        its transaction: the same statements, awaited."""
        what = "write to the outbox"
        self._check_open(what)
        with self._guard(what):
            joined = await self._resources.ajoined(resource, what)
            if not rows:
                return
            for chunk in _chunks(rows):
                await joined.execute(*self._insert_of(chunk))

    def _insert_of(self, chunk: Sequence[PendingRow]) -> tuple[sa.Executable, Any]:
        """The INSERT of ``chunk`` and its parameters."""
        if self._notifier is not None:
            # One round trip for the rows and the notification.
            return self._notifier.insert(len(chunk)), _numbered(chunk)
        # One compiled statement, reused: the rows go as executemany parameters,
        # which SQLAlchemy sends as multi-row VALUES ("insertmanyvalues"). Building
        # .values([...]) per call cost a statement compilation per transaction.
        return self._insert, [_parameters(row) for row in chunk]

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``wake`` whenever a write commits anywhere (PostgreSQL ``LISTEN``).

        Returns a function that stops listening, or None when this database has no
        notifications (or ``notify=False``). A dropped listening connection is opened
        again after a pause; meanwhile polling carries on.
        """
        if self._notifier is None:
            return None
        return self._notifier.listen(wake, pause=self.poll_interval)

    def write_now(self, rows: Sequence[PendingRow]) -> None:
        """INSERT ``rows`` in a transaction of their own (a publish outside any scope)."""
        with self._begin("write to the outbox") as connection:
            self.write(connection, rows)

    # -- the relay's side --------------------------------------------------------------

    def claim(self, *, owner: str, batch: int, lease: float, per_key: int = 1) -> list[ClaimedRow]:
        """Lease up to ``batch`` available rows, oldest first, each the first row of its
        key left or, with ``per_key`` > 1, up to that many consecutive rows of one key
        from its first (``SupportsClaimRuns``). On PostgreSQL each also says whether its
        destination's inbox holds its envelope."""
        what = "claim outbox rows"
        if drives(self._writer):
            # On psycopg itself: its rows are already of the claimed row's types (the
            # heads scan's two trailing columns are past what a row reads).
            with self._driven(what) as driven:
                found = self._dialect.claim(
                    driven,  # type: ignore[arg-type]
                    owner=owner,
                    batch=batch,
                    lease=lease,
                    per_key=per_key,
                )
            rows = list(map(_claimed_row, found))
        else:
            seen = self._dialect.claim_reports_seen
            with self._begin(what) as connection:
                found = self._dialect.claim(
                    connection, owner=owner, batch=batch, lease=lease, per_key=per_key
                )
            # Rows unpacked by position (the dialects' CLAIMED order), each value in the
            # type a claimed row holds, whatever the driver gave.
            rows = [
                _claimed_row(
                    (
                        int(row[0]),
                        str(row[1]),
                        row[2],
                        row[3],
                        row[4],
                        bytes(row[5]),
                        int(row[6]),
                        float(row[7]),
                        None if row[8] is None else float(row[8]),
                        bool(row[9]) if seen else None,
                    )
                )
                for row in found
            ]
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
        transaction, so a row and its mark go together (in a fixed order, so two relays
        marking the same pairs cannot deadlock).
        """
        ids = list(ids)
        if not ids:
            return 0
        pairs = sorted({(handler, _uuid_text(envelope_id)) for handler, envelope_id in processed})
        what = "complete outbox rows"
        if drives(self._writer):
            with self._driven(what) as driven:
                return self._dialect.complete(driven, ids, owner=owner, pairs=pairs)  # type: ignore[arg-type]
        with self._begin(what) as connection:
            return self._dialect.complete(connection, ids, owner=owner, pairs=pairs)

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool:
        """Put a failed row back, available again in ``delay`` seconds (fenced)."""
        table, now = self.outbox, self._dialect.now
        with self._begin("reschedule an outbox row") as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.id == row_id, table.c.lease_owner == owner)
                .values(
                    attempts=attempts,
                    available_at=now + float(delay),
                    lease_owner=None,
                    lease_until=None,
                    last_error=redact(error)[:_ERROR_LENGTH],
                    # The first failure's time, stamped once and kept by later reschedules.
                    first_failed_at=sa.func.coalesce(table.c.first_failed_at, now),
                )
            )
            return int(result.rowcount) == 1

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int:
        """Extend the lease of rows still being delivered."""
        ids = list(ids)
        if not ids:
            return 0
        table = self.outbox
        with self._begin("renew outbox leases") as connection:
            result = connection.execute(
                sa.update(table)
                .where(table.c.lease_owner == owner, table.c.id.in_(ids))
                .values(lease_until=self._dialect.now + float(lease))
            )
            return int(result.rowcount)

    def status(self) -> OutboxStatus:
        """Counts and ages, for operators."""
        table, now = self.outbox, self._dialect.now
        with self._begin("read the outbox status", self._reader) as connection:
            total, in_flight, delayed, oldest = connection.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(sa.case((table.c.lease_until >= now, 1), else_=0)),
                    sa.func.sum(sa.case((table.c.available_at > now, 1), else_=0)),
                    now - sa.func.min(table.c.created_at),
                ).select_from(table)
            ).one()
            by_name = {
                name: int(count)
                for name, count in connection.execute(
                    sa.select(table.c.name, sa.func.count())
                    .group_by(table.c.name)
                    .order_by(table.c.name)
                )
            }
        return OutboxStatus(
            pending=int(total),
            in_flight=int(in_flight or 0),
            delayed=int(delayed or 0),
            oldest_age=None if oldest is None else max(0.0, float(oldest)),
            by_name=by_name,
        )

    def clear(self) -> None:
        """Delete every outbox row and inbox mark (tests: ``SupportsClear``)."""
        with self._begin("clear the outbox") as connection:
            connection.execute(sa.delete(self.outbox))
            connection.execute(sa.delete(self.inbox))
        self._dialect.forget_claims()

    # -- the inbox -----------------------------------------------------------------------

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        """Whether ``handler`` already processed ``envelope_id``."""
        inbox = self.inbox
        with self._begin("read the inbox", self._reader) as connection:
            found = connection.execute(
                sa.select(inbox.c.handler).where(
                    inbox.c.handler == handler, inbox.c.envelope_id == str(envelope_id)
                )
            ).first()
        return found is not None

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        """Which of the (handler, envelope id) pairs the inbox already holds."""
        found: set[tuple[str, uuid.UUID]] = set()
        with self._begin("read the inbox", self._reader) as connection:
            for start in range(0, len(pairs), _CHUNK_ROWS):
                chunk = [
                    (handler, str(envelope_id))
                    for handler, envelope_id in pairs[start : start + _CHUNK_ROWS]
                ]
                for handler, envelope_id in connection.execute(self._seen, {"pairs": chunk}):
                    found.add((handler, uuid.UUID(envelope_id)))
        return found

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        """Record that ``handler`` processed ``envelope_id``; False if it already had.

        With ``connection`` (a ``Session`` or ``Connection``), the INSERT joins its open
        transaction (the handler's own writes), so effects and mark commit together. A
        concurrent mark of the same pair waits for that transaction, then finds it.
        """
        statement = self._dialect.insert_marks(
            [{"handler": handler, "envelope_id": str(envelope_id)}]
        )
        if connection is not None:
            self._check_open("write the inbox")
            with self._guard("write the inbox"):
                joined = self._resources.joined(connection, "write the inbox")
                return int(joined.execute(statement).rowcount) == 1
        with self._begin("write the inbox") as own:
            return int(own.execute(statement).rowcount) == 1

    # -- the application's transactions --------------------------------------------------

    @contextmanager
    def handler_transaction(self) -> Iterator[Session]:
        """A ``Session`` in a transaction of its own, for a durable handler that takes one.

        Commits on a clean exit, rolls back on an exception. On SQLite it begins
        IMMEDIATE: the write lock is held while the handler runs, so keep such handlers
        short.
        """
        self._check_open("open a handler transaction")
        with Session(self._dialect.handler_engine) as session, session.begin():
            yield session

    def transaction_control(self, resource: object) -> TransactionControl | None:
        """How ``bus.transaction()`` drives a ``Session`` (also behind a
        ``scoped_session``) or a ``Connection`` (else None)."""
        resource = unscoped(resource)
        immediate = self._dialect.begins_immediate
        if isinstance(resource, Session):
            self._resources.check(resource, "bus.transaction()")
            return SessionControl(resource, self.outbox, immediate=immediate)
        if isinstance(resource, Connection):
            self._resources.check(resource, "bus.transaction()")
            return ConnectionControl(resource, immediate=immediate)
        return None

    def async_transaction_control(self, resource: object) -> AsyncTransactionControl | None:
        """How ``bus.atransaction()`` drives an ``AsyncSession`` or an ``AsyncConnection``
        (else None)."""
        asyncio = asyncio_module()
        if asyncio is None:
            return None
        resource = unscoped(resource)
        if isinstance(resource, asyncio.AsyncSession):
            self._resources.check_async(resource, "bus.atransaction()")
            return AsyncControl(resource)
        if isinstance(resource, asyncio.AsyncConnection):
            self._resources.check_async(resource, "bus.atransaction()")
            return AsyncControl(resource)
        return None

    def open_transaction(self) -> Session | Connection | None:
        """A session or connection on this outbox's database with a transaction that this
        thread or task began and that is still open, or None. A durable publish outside
        ``bus.transaction()`` is refused while there is one: its row would commit on the
        side. (Async engines are seen once ``bus.atransaction()`` has met them; every
        session, sync or async, is seen from the start.)"""
        return self._resources.open_transaction()

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        """Refuse further work. The engine is the application's: it stays open."""
        with self._lock:
            self._closed = True

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise OutboxError(f"cannot {what}: the outbox on {self._url} is closed")

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Database errors become OutboxErrors naming the operation (never the password)."""
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            raise OutboxError(f"cannot {what} in {self._url}: {self._reason(exc)}") from exc

    @contextmanager
    def _begin(self, what: str, engine: Engine | None = None) -> Iterator[Connection]:
        """A short transaction of the relay's own; committed on a clean exit."""
        self._check_open(what)
        with self._guard(what), (engine or self._writer).begin() as connection:
            yield connection

    @contextmanager
    def _driven(self, what: str) -> Iterator[DriverConnection]:
        """A short transaction of the relay's own on the driver itself (``_driver``)."""
        self._check_open(what)
        with self._guard(what), driver_transaction(self._writer, self._rendered) as driven:
            yield driven

    def _reason(self, exc: sa_exc.SQLAlchemyError) -> str:
        """The driver's message, without the statement and its parameters (payloads)."""
        return driver_reason(exc, self._password)


def _chunks(rows: Sequence[PendingRow]) -> Iterator[Sequence[PendingRow]]:
    start, size = 0, 0
    for index, row in enumerate(rows):
        if index > start and (
            index - start >= _CHUNK_ROWS or size + len(row.payload) > _CHUNK_BYTES
        ):
            yield rows[start:index]
            start, size = index, 0
        size += len(row.payload)
    yield rows[start:]


def _uuid_text(value: uuid.UUID) -> str:
    """The canonical text of an envelope id (the inbox's form); anything else that names
    a UUID is normalised, and what does not raises ValueError."""
    return str(value if type(value) is uuid.UUID else uuid.UUID(str(value)))


def _parameters(row: PendingRow) -> dict[str, Any]:
    return {
        "envelope_id": str(row.envelope_id),
        "name": row.name,
        "destination": row.destination,
        "key": row.key,
        "payload": row.payload,
    }


def _numbered(rows: Sequence[PendingRow]) -> dict[str, Any]:
    """The rows' parameters, suffixed by position, for one multi-row VALUES."""
    return {
        f"{name}_{n}": value
        for n, row in enumerate(rows)
        for name, value in _parameters(row).items()
    }
