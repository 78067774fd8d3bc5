"""``SQLAlchemyDeadLetterStore``: dead letters in the application's database, for a fleet.

Every process of an application on several hosts writes its dead letters to the one
table, and ``eventbus dlq`` on any host sees (and replays) them all. A replay claims a
letter under a lease measured by the database's clock, in one UPDATE whose WHERE decides:
of any number of replayers on any hosts, exactly one wins, and one whose host clock runs
fast or slow changes nothing.

Times of failure are kept as whole microseconds since the epoch (exact, and they sort and
filter); a letter comes back with its instants in UTC.
"""

from __future__ import annotations

import builtins
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from eventbus.deadletters import DeadLetter
from eventbus.deadletters.checks import (
    Selection,
    check_id,
    check_lease,
    check_letter,
    check_limit,
    check_owner,
    check_purge,
    check_selection,
    check_update,
    closed_error,
    not_found,
    not_held,
)
from eventbus.errors import DeadLetterStoreError

from ._core import ConfigurationError
from ._engine import TABLE_OPTIONS, StoreEngine
from ._schema import check_prefix

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

__all__ = ["SQLAlchemyDeadLetterStore", "dead_letter_table"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_IDS_PER_STATEMENT: Final = 500


def dead_letter_table(metadata: sa.MetaData, *, prefix: str = "eventbus") -> sa.Table:
    """The table ``{prefix}_dead_letters`` in ``metadata`` (the same table again when
    called twice), for applications whose migrations Alembic generates: include it, and
    open the store with ``create=False``."""
    check_prefix(prefix)
    name = f"{prefix}_dead_letters"
    if name in metadata.tables:
        return metadata.tables[name]
    long_text = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("envelope_id", sa.String(36), nullable=False),
        sa.Column("event_name", sa.String(200), nullable=False),
        sa.Column("handler", sa.String(200), nullable=False),
        sa.Column("error_type", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        # Up to 20,000 characters: more than MariaDB's TEXT holds in utf8mb4.
        sa.Column("traceback", long_text, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_us", sa.BigInteger(), nullable=False),
        sa.Column("last_failed_us", sa.BigInteger(), nullable=False),
        sa.Column(
            "payload",
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("claim_owner", sa.String(200), nullable=True),
        sa.Column("claim_until", sa.Double(), nullable=True),
        **TABLE_OPTIONS,
    )
    sa.Index(f"{name}_handler", table.c.handler, table.c.last_failed_us)
    sa.Index(f"{name}_event_name", table.c.event_name, table.c.last_failed_us)
    sa.Index(f"{name}_last_failed", table.c.last_failed_us, table.c.id)
    return table


class SQLAlchemyDeadLetterStore:
    """Dead letters in the table ``{prefix}_dead_letters`` of the application's database
    (PostgreSQL, MariaDB or MySQL, SQLite), through a SQLAlchemy engine.

    Implements ``eventbus.typing.DeadLetterStore``. Every process of the application, on
    any host, may share it: a replay's claim is one UPDATE fenced by its owner, and its
    lease is measured by the database's clock (``clock``, a function returning seconds,
    replaces it: tests). The table is created unless it exists (``create=False``: it must
    be there, made by your migrations from ``dead_letter_table`` or ``schema_sql()``).
    On SQLite the engine is set up as ``SQLAlchemyOutbox`` sets it up: create the stores
    before the sessions. ``close()`` leaves the engine, which is the application's, open.

    Every failure of the database is raised as ``DeadLetterStoreError``, naming the
    operation and the database (never its password), chaining the cause.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        metadata: sa.MetaData | None = None,
        prefix: str = "eventbus",
        create: bool = True,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                "SQLAlchemyDeadLetterStore takes a sqlalchemy.Engine (create_engine(...)), "
                f"got {type(engine).__qualname__}; async engines are not supported"
            )
        if clock is not None and not callable(clock):
            raise ConfigurationError(f"clock must be a function returning seconds, got {clock!r}")
        self._store_engine = store_engine = StoreEngine(engine)
        self.table = dead_letter_table(
            sa.MetaData() if metadata is None else metadata, prefix=prefix
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        table = self.table
        self._columns = (
            table.c.id,
            table.c.envelope_id,
            table.c.event_name,
            table.c.handler,
            table.c.error_type,
            table.c.message,
            table.c.traceback,
            table.c.attempts,
            table.c.first_failed_us,
            table.c.last_failed_us,
            table.c.payload,
        )
        with self._guard("open the dead-letter table"):
            store_engine.prepare()
            if create:
                self._create()
            else:
                self._check_table()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SQLAlchemyDeadLetterStore {self._store_engine.url!r} {self.table.name}{state}>"

    @property
    def engine(self) -> Engine:
        """The application's engine the letters live on."""
        return self._store_engine.engine

    # -- the schema ----------------------------------------------------------------------

    def schema_sql(self) -> str:
        """The DDL of the table and its indexes for this engine's database."""
        dialect = self._store_engine.engine.dialect
        statements = [str(CreateTable(self.table).compile(dialect=dialect)).strip()]
        statements.extend(
            str(CreateIndex(index).compile(dialect=dialect)).strip()
            for index in sorted(self.table.indexes, key=lambda index: str(index.name))
        )
        return "".join(f"{statement};\n" for statement in statements)

    def _create(self) -> None:
        """Create the table unless it exists; a creation that raced another process's is
        forgiven when the table is there after all."""
        try:
            with self._store_engine.writer.begin() as connection:
                self.table.metadata.create_all(connection, tables=[self.table])
        except sa_exc.SQLAlchemyError:
            with self._store_engine.reader.connect() as connection:
                if not sa.inspect(connection).has_table(self.table.name):
                    raise

    def _check_table(self) -> None:
        with self._store_engine.reader.connect() as connection:
            inspector = sa.inspect(connection)
            if not inspector.has_table(self.table.name):
                raise DeadLetterStoreError(
                    f"the dead-letter table {self.table.name} does not exist on "
                    f"{self._store_engine.url}: create it with your migrations "
                    "(dead_letter_table(metadata), or schema_sql()), or open the store "
                    "with create=True"
                )
            present = {column["name"] for column in inspector.get_columns(self.table.name)}
        missing = [column.name for column in self.table.columns if column.name not in present]
        if missing:
            raise DeadLetterStoreError(
                f"the dead-letter table {self.table.name} on {self._store_engine.url} lacks "
                f"the column(s) {', '.join(missing)}; compare it with schema_sql()"
            )

    # -- transactions and errors ---------------------------------------------------------

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sa_exc.SQLAlchemyError as exc:
            raise DeadLetterStoreError(
                f"dead-letter store on {self._store_engine.url}: cannot {what}: "
                f"{self._store_engine.reason(exc)}"
            ) from exc

    @contextmanager
    def _writing(self, what: str) -> Iterator[Connection]:
        """A short transaction of the store's own: committed, or rolled back on error."""
        self._check_open()
        with self._guard(what), self._store_engine.writer.begin() as connection:
            yield connection

    @contextmanager
    def _reading(self, what: str) -> Iterator[Connection]:
        self._check_open()
        with self._guard(what), self._store_engine.reader.connect() as connection:
            yield connection

    def _check_open(self) -> None:
        if self._closed:
            raise closed_error(self)

    def _now(self) -> ColumnElement[float]:
        """The time leases are measured by: the database's clock, or the given one."""
        if self._clock is None:
            return self._store_engine.now
        return sa.literal(float(self._clock()), sa.Double())

    # -- reading rows --------------------------------------------------------------------

    def _letter(self, row: Sequence[Any], what: str) -> DeadLetter:
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
                first_failed_at=_instant(row[8]),
                last_failed_at=_instant(row[9]),
                payload=bytes(row[10]),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise DeadLetterStoreError(
                f"dead-letter store on {self._store_engine.url}: {what} read a corrupt row "
                f"(id {row[0]!r}): {exc}"
            ) from exc

    def _fetch(self, connection: Connection, letter_id: uuid.UUID, what: str) -> DeadLetter | None:
        row = connection.execute(
            sa.select(*self._columns).where(self.table.c.id == str(letter_id))
        ).first()
        return None if row is None else self._letter(row, what)

    def _holder(self, connection: Connection, letter_id: uuid.UUID) -> tuple[bool, str | None]:
        """Whether the letter exists, and who holds its claim."""
        row = connection.execute(
            sa.select(self.table.c.claim_owner).where(self.table.c.id == str(letter_id))
        ).first()
        return (False, None) if row is None else (True, row[0])

    def _where(self, selection: Selection) -> list[ColumnElement[bool]]:
        table = self.table
        clauses: list[ColumnElement[bool]] = []
        if selection.handler is not None:
            clauses.append(table.c.handler == selection.handler)
        if selection.event_name is not None:
            clauses.append(table.c.event_name == selection.event_name)
        if selection.since is not None:
            clauses.append(table.c.last_failed_us >= _micros(selection.since))
        if selection.until is not None:
            clauses.append(table.c.last_failed_us <= _micros(selection.until))
        return clauses

    # -- the DeadLetterStore protocol ------------------------------------------------------

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter``; a letter with the same id already kept is an error."""
        letter = check_letter(letter)
        values = {
            "id": str(letter.id),
            "envelope_id": str(letter.envelope_id),
            "event_name": letter.event_name,
            "handler": letter.handler,
            "error_type": letter.error_type,
            "message": letter.message,
            "traceback": letter.traceback,
            "attempts": letter.attempts,
            "first_failed_us": _micros(letter.first_failed_at),
            "last_failed_us": _micros(letter.last_failed_at),
            "payload": letter.payload,
        }
        try:
            with self._writing("add a dead letter") as connection:
                connection.execute(sa.insert(self.table).values(values))
        except DeadLetterStoreError as error:
            if not isinstance(error.__cause__, sa_exc.IntegrityError):
                raise
            with self._reading("add a dead letter") as connection:
                exists = self._holder(connection, letter.id)[0]
            if not exists:
                raise
            raise DeadLetterStoreError(
                f"a dead letter with the id {letter.id} is already stored; "
                "letters are never overwritten"
            ) from None

    def get(self, letter_id: uuid.UUID) -> DeadLetter:
        """The letter with this id (DeadLetterNotFoundError if there is none)."""
        letter_id = check_id(letter_id)
        with self._reading("get a dead letter") as connection:
            letter = self._fetch(connection, letter_id, "get")
        if letter is None:
            raise not_found(letter_id)
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
        selection = check_selection(handler, event_name, since, until)
        limit = check_limit(limit)
        table = self.table
        query = (
            sa.select(*self._columns)
            .where(*self._where(selection))
            .order_by(table.c.last_failed_us, table.c.id)
            .limit(limit)
        )
        with self._reading("list dead letters") as connection:
            rows = connection.execute(query).all()
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
        selection = check_selection(handler, event_name, since, until)
        query = sa.select(sa.func.count()).select_from(self.table).where(*self._where(selection))
        with self._reading("count dead letters") as connection:
            return int(connection.execute(query).scalar_one())

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None:
        """Claim the letter for ``owner`` for ``lease`` seconds and return it.

        None if another owner holds an unexpired claim. The same owner renews its claim;
        an expired claim is taken over. One UPDATE decides, so of concurrent claimants on
        any number of hosts exactly one wins.
        """
        letter_id = check_id(letter_id)
        owner = check_owner(owner)
        lease = check_lease(lease)
        table = self.table
        with self._writing("claim a dead letter") as connection:
            now = self._now()
            won = connection.execute(
                sa.update(table)
                .where(
                    table.c.id == str(letter_id),
                    sa.or_(
                        table.c.claim_owner.is_(None),
                        table.c.claim_owner == owner,
                        table.c.claim_until < now,
                    ),
                )
                .values(claim_owner=owner, claim_until=now + lease)
            ).rowcount
            letter = self._fetch(connection, letter_id, "claim")
        if letter is None:
            raise not_found(letter_id)
        return letter if won else None

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool:
        """Delete the letter if ``owner`` holds its claim; whether it was deleted."""
        letter_id = check_id(letter_id)
        owner = check_owner(owner)
        table = self.table
        with self._writing("resolve a dead letter") as connection:
            deleted = connection.execute(
                sa.delete(table).where(table.c.id == str(letter_id), table.c.claim_owner == owner)
            ).rowcount
        return int(deleted) > 0

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None:
        """Give up ``owner``'s claim, storing ``updated``'s error and attempts if given.

        DeadLetterStoreError if ``owner`` does not hold the claim (any more).
        """
        letter_id = check_id(letter_id)
        owner = check_owner(owner)
        new = None if updated is None else check_update(letter_id, updated)
        values: dict[str, Any] = {"claim_owner": None, "claim_until": None}
        if new is not None:
            values.update(
                error_type=new.error_type,
                message=new.message,
                traceback=new.traceback,
                attempts=new.attempts,
                last_failed_us=_micros(new.last_failed_at),
            )
        table = self.table
        with self._writing("release a dead letter") as connection:
            changed = connection.execute(
                sa.update(table)
                .where(table.c.id == str(letter_id), table.c.claim_owner == owner)
                .values(values)
            ).rowcount
            if not changed:
                exists, holder = self._holder(connection, letter_id)
                if not exists:
                    raise not_found(letter_id)
                raise not_held(letter_id, owner, holder)

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
        selection = check_selection(handler, event_name, since, until)
        ids = check_purge(letter_ids, selection, everything=all)
        table = self.table
        with self._writing("purge dead letters") as connection:
            now = self._now()
            clauses = [
                *self._where(selection),
                sa.or_(table.c.claim_owner.is_(None), table.c.claim_until < now),
            ]
            if ids is None:
                return int(connection.execute(sa.delete(table).where(*clauses)).rowcount)
            ordered = sorted(str(letter_id) for letter_id in ids)
            deleted = 0
            for start in range(0, len(ordered), _IDS_PER_STATEMENT):
                chunk = ordered[start : start + _IDS_PER_STATEMENT]
                deleted += connection.execute(
                    sa.delete(table).where(table.c.id.in_(chunk), *clauses)
                ).rowcount
            return deleted

    def close(self) -> None:
        """Refuse further work; closing twice is fine. The engine is the application's:
        it stays open."""
        with self._lock:
            self._closed = True


def _micros(moment: datetime) -> int:
    """Whole microseconds since the epoch of an aware datetime (exact)."""
    return (moment - _EPOCH) // _MICROSECOND


def _instant(micros: object) -> datetime:
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"a time of failure must be whole microseconds, got {micros!r}")
    return _EPOCH + timedelta(microseconds=micros)
