"""What the outbox asks of a database, and what PostgreSQL, MariaDB and SQLite share.

A store holds one dialect object, chosen from its engine when it is made
(``dialect_for``), and asks it for everything that differs between databases: the
engines its own transactions run on, the database clock, the claim, the completion with
its inbox marks, the inbox mark INSERT that skips marks already there, notifications,
the schema's specifics, the server's version floor, which sessions and connections it
can join. The statements that read the same everywhere (reschedule, renew, status, the
inbox reads) stay in the store, built on the dialect's ``now``.

A claim returns rows of the ``CLAIMED`` columns, in that order: the store unpacks them
by position. Whatever a claim picks, it must keep the claim invariant: a row is
claimable only while no earlier row of its (destination, key) is left in any state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import sqlalchemy as sa

from eventbus.outbox.claims import ClaimState
from eventbus_contrib._claims import CLAIMED

from .._core import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect, Engine

__all__ = ["CLAIMED", "Notifier", "OutboxDialect", "ReturningDialect"]


class Notifier(Protocol):
    """Commits that wake relays at once, in any process: writes that notify, and a
    listener. Only ever an early wake-up: polling is what makes delivery correct."""

    def insert(self, count: int) -> sa.TextClause:
        """The INSERT of ``count`` rows (numbered parameters) that also notifies."""
        ...

    def listen(self, wake: Callable[[], None], *, pause: float) -> Callable[[], None]:
        """Call ``wake`` on every notification until the returned function is called;
        a lost connection is opened again after ``pause`` seconds."""
        ...


class OutboxDialect(ABC):
    """How the outbox speaks to one kind of database.

    Made once per store, for its engine and its two tables; the statements it builds are
    kept, so SQLAlchemy compiles each once.
    """

    now_sql: ClassVar[str]
    """Unix seconds with sub-second precision, from the database's clock (never this
    process's: leases and retry times must agree across machines)."""
    floor: ClassVar[tuple[tuple[int, int], str]]
    """The oldest server version that can run the claim, and its name in the error."""
    claim_reports_seen: ClassVar[bool] = False
    """Whether a claimed row also says if the destination's inbox holds its envelope."""
    begins_immediate: ClassVar[bool] = False
    """Whether the transactions of ``bus.transaction()`` and of the relay take the
    database's write lock when they begin."""

    def __init__(self, engine: Engine, outbox: sa.Table, inbox: sa.Table) -> None:
        self.outbox = outbox
        self.inbox = inbox
        self.now: sa.ColumnElement[float] = sa.literal_column(self.now_sql, sa.Double())
        self.writer, self.reader, self.handler_engine = self._engines(engine)
        self._complete = sa.delete(outbox).where(
            outbox.c.lease_owner == sa.bindparam("owner"),
            outbox.c.id.in_(sa.bindparam("ids", expanding=True)),
        )
        self._mark_many = self._insert_new({"processed_at": self.now})

    def _engines(self, engine: Engine) -> tuple[Engine, Engine, Engine]:
        """The engines of the relay's writes, of its reads, and of handler transactions."""
        # Short relay transactions at READ COMMITTED: no gap locks (MariaDB), no
        # serialization failures (an engine configured SERIALIZABLE).
        writer = engine.execution_options(isolation_level="READ COMMITTED")
        return writer, writer, engine

    # -- the server ------------------------------------------------------------------------

    def version_floor(self, dialect: Dialect) -> tuple[tuple[int, int], str]:
        """The oldest version of the server behind ``dialect`` that can run the claim."""
        del dialect
        return self.floor

    def prepare(self, connection: Connection) -> None:
        """Check that the server can run the claim (``connection`` is in AUTOCOMMIT).
        Databases that need more before their first claim extend this."""
        version = connection.dialect.server_version_info or ()
        needed, label = self.version_floor(connection.dialect)
        if tuple(version[:2]) < needed:
            shown = ".".join(map(str, version))
            raise ConfigurationError(f"the outbox needs {label} or later, got {shown}")

    # -- the relay -------------------------------------------------------------------------

    def claimable(self, batch: int, *, only_id: bool) -> sa.Select[Any]:
        """The oldest due, unleased rows whose key has no earlier row left (in any state)."""
        now = self.now
        mine = self.outbox.alias("o")
        earlier = self.outbox.alias("p")
        blocked = (
            sa.select(earlier.c.id)
            .where(
                earlier.c.destination == mine.c.destination,
                earlier.c.key == mine.c.key,
                earlier.c.id < mine.c.id,
            )
            .exists()
        )
        columns = [mine.c.id] if only_id else [mine.c[name] for name in CLAIMED]
        return (
            sa.select(*columns)
            .where(
                mine.c.available_at <= now,
                sa.or_(mine.c.lease_until.is_(None), mine.c.lease_until < now),
                sa.or_(mine.c.key.is_(None), ~blocked),
            )
            .order_by(mine.c.id)
            .limit(batch)
            .with_for_update(skip_locked=True)  # rendered by PostgreSQL and MariaDB only
        )

    def forget_claims(self) -> None:  # noqa: B027 - most dialects remember nothing
        """Forget what claims remembered of the outbox's keys (it was emptied)."""

    @abstractmethod
    def claim(
        self, connection: Connection, *, owner: str, batch: int, lease: float, per_key: int = 1
    ) -> Sequence[Any]:
        """Lease up to ``batch`` claimable rows to ``owner`` for ``lease`` seconds, in
        ``connection``'s transaction; returns them as rows of the ``CLAIMED`` columns.
        With ``per_key`` > 1, up to that many consecutive rows of one key, from its first."""

    def complete(
        self, connection: Connection, ids: list[int], *, owner: str, pairs: list[tuple[str, str]]
    ) -> int:
        """Write the inbox marks ``pairs`` (handler, envelope id text: sorted, so two relays
        marking the same pairs cannot deadlock) and delete the rows ``owner`` still holds,
        in ``connection``'s transaction; returns how many rows it deleted."""
        if pairs:
            # executemany of one statement built once (sent as multi-row VALUES):
            # building the INSERT with literal values compiled it on every call.
            connection.execute(
                self._mark_many,
                [
                    {"handler": handler, "envelope_id": envelope_id}
                    for handler, envelope_id in pairs
                ],
            )
        result = connection.execute(self._complete, {"owner": owner, "ids": ids})
        return int(result.rowcount)

    # -- the inbox -------------------------------------------------------------------------

    def insert_marks(self, marks: list[dict[str, str]]) -> sa.Insert:
        """INSERT inbox rows, skipping those already there; its rowcount is what it added."""
        values = [{**mark, "processed_at": self.now} for mark in marks]
        # An INSERT's rowcount is kept only when asked (SQLAlchemy >= 2.0.28).
        return self._insert_new(values).execution_options(preserve_rowcount=True)

    @abstractmethod
    def _insert_new(self, values: dict[str, Any] | list[dict[str, Any]]) -> sa.Insert:
        """An INSERT of ``values`` into the inbox that skips marks already there."""

    # -- notifications -----------------------------------------------------------------------

    def notifier(self, engine: Engine, *, channel: str, url: str) -> Notifier | None:
        """What wakes relays when a write commits, or None where the database has no
        notifications."""
        del engine, channel, url
        return None

    # -- the schema ------------------------------------------------------------------------

    def lock_schema(self, connection: Connection) -> None:
        """Make processes that create the schema at once take turns, where the database
        can (elsewhere a creation that lost the race is forgiven by the store)."""
        del connection

    def storage_sql(self) -> list[str]:
        """Storage settings for a new outbox table: run once, after its CREATE TABLE."""
        return []

    # -- the application's sessions and connections -------------------------------------------

    def autocommits(self, connection: Connection) -> bool:
        """Whether statements on ``connection`` commit one by one (AUTOCOMMIT).

        ``create_engine(isolation_level="AUTOCOMMIT")`` shows in no execution option: it
        sets the driver's own flag on each new connection, so that flag is what to read.
        """
        if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return True
        return self._driver_autocommits(connection)

    def _driver_autocommits(self, connection: Connection) -> bool:
        """Whether the driver's own connection is in autocommit mode. SQLAlchemy 2.1 reads
        it for us (``Dialect.detect_autocommit_setting``); 2.0 has no such method, so the
        driver's flag is read directly there."""
        raw = connection.connection.dbapi_connection
        if raw is None:
            return False
        detect = getattr(connection.dialect, "detect_autocommit_setting", None)  # SQLAlchemy 2.1
        if detect is not None:
            try:
                return bool(detect(raw))
            except NotImplementedError:  # a dialect that cannot tell
                pass
        return _driver_flag(raw)

    def check_engine(self, engine: Engine, outbox_engine: Engine, *, what: str, kind: str) -> None:
        """Refuse a session or connection (of type name ``kind``) on ``engine``, a
        database of this kind, when the outbox cannot join it there."""
        del engine, outbox_engine, what, kind

    def check_async(self, *, what: str, kind: str) -> None:
        """Refuse an async session or connection (of type name ``kind``) where this
        database has no async outbox."""
        del what, kind


class ReturningDialect(OutboxDialect):
    """A database with ``UPDATE ... RETURNING`` and recursive CTEs: a claim is a window of
    the oldest rows, then (when that was short) each key's head found directly, each one
    statement (``eventbus_contrib._claims``). The rows of a heads scan end with two more
    columns (where it stopped), which the store leaves alone."""

    def __init__(self, engine: Engine, outbox: sa.Table, inbox: sa.Table) -> None:
        super().__init__(engine, outbox, inbox)
        self._claims: dict[str, sa.TextClause] = {}
        self._claim_state = ClaimState()

    def claim(
        self, connection: Connection, *, owner: str, batch: int, lease: float, per_key: int = 1
    ) -> Sequence[Any]:
        def execute(statement: str, parameters: dict[str, Any]) -> Sequence[Any]:
            text = self._claims.get(statement)
            if text is None:
                text = self._claims[statement] = sa.text(self._claim_sql(statement))
            return connection.execute(text, parameters).all()

        return self._claim_state.claim(execute, owner, batch, lease, per_key)

    def forget_claims(self) -> None:
        self._claim_state = ClaimState()

    @abstractmethod
    def _claim_sql(self, statement: str) -> str:
        """The text of the claim's ``window``, ``heads`` or ``runs`` statement (named
        parameters as ``ClaimState.parameters`` gives them)."""


def _driver_flag(raw: object) -> bool:
    """The driver's autocommit flag, read without a round trip: a boolean ``autocommit``
    (psycopg, psycopg2, pg8000, and SQLAlchemy's asyncpg and psycopg async adapters) or
    ``get_autocommit()`` (PyMySQL, mysqlclient); an async adapter's driver is asked next
    (aiomysql, asyncmy). A driver that shows neither counts as not autocommitting."""
    for each in (raw, getattr(raw, "driver_connection", None)):
        flag = getattr(each, "autocommit", None)
        if isinstance(flag, bool):
            return flag
        get_autocommit = getattr(each, "get_autocommit", None)
        if callable(get_autocommit):
            return bool(get_autocommit())
    return False
