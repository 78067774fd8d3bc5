"""The application's sessions and connections, as the outbox takes them.

Writes and inbox marks go through the caller's ``Session`` or ``Connection`` (or their
async twins), in its transaction. Before the outbox uses one it checks that it runs on
the outbox's database (on SQLite, on the very engine the store set up), and refuses one
in AUTOCOMMIT, whose rows would commit whatever became of the application's transaction.
A ``scoped_session`` stands for the session it holds in this thread or task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, scoped_session

from ._core import ConfigurationError
from ._dialects import dialect_type
from ._tracking import open_resources, watch_engine

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    from ._dialects import OutboxDialect

__all__ = ["Resources", "asyncio_module", "unscoped"]


class Resources:
    """The sessions and connections one outbox joins: those on its database."""

    def __init__(self, engine: Engine, outbox: sa.Table, dialect: OutboxDialect) -> None:
        self._engine = engine
        self._outbox = outbox
        self._dialect = dialect
        self._url = engine.url.render_as_string(hide_password=True)

    def check(self, resource: Session | Connection, what: str) -> None:
        """``resource`` must run on this outbox's kind of database (on SQLite, on this
        very engine: its transactions are set up by listeners on it)."""
        if isinstance(resource, Session):
            try:
                bind = resource.get_bind(clause=self._outbox)
            except sa_exc.UnboundExecutionError as exc:
                raise ConfigurationError(
                    f"{what} needs a Session bound to an engine: Session({self._url!r} engine)"
                ) from exc
            engine = bind.engine if isinstance(bind, Connection) else bind
        else:
            engine = resource.engine
        if dialect_type(engine) is not type(self._dialect):
            raise ConfigurationError(
                f"{what} got a {type(resource).__qualname__} on a {engine.dialect.name} "
                f"database, but the outbox is on {self._url}: use a session of that engine"
            )
        self._dialect.check_engine(
            engine, self._engine, what=what, kind=type(resource).__qualname__
        )

    def check_async(self, resource: AsyncSession | AsyncConnection, what: str) -> None:
        """``resource`` must run on an async engine for this outbox's database (the same
        URL, the driver and the password aside)."""
        kind = type(resource).__qualname__
        self._dialect.check_async(what=what, kind=kind)
        if isinstance(resource, asyncio_module().AsyncSession):
            try:
                bind = resource.sync_session.get_bind(clause=self._outbox)
            except sa_exc.UnboundExecutionError as exc:
                raise ConfigurationError(
                    f"{what} needs an AsyncSession bound to an async engine: "
                    f"AsyncSession(create_async_engine({self._url!r}))"
                ) from exc
            engine = bind.engine if isinstance(bind, Connection) else bind
        else:
            engine = cast("AsyncConnection", resource).sync_engine
        if _database(engine.url) != _database(self._engine.url):
            theirs = engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"{what} got a {kind} on {theirs}, but the outbox is on {self._url}: use "
                "an async engine on the outbox's database"
            )
        watch_engine(engine)  # its connections' transactions are seen from now on

    def joined(self, resource: object, what: str) -> Connection:
        """The connection of the caller's Session or Connection, in its transaction."""
        resource = unscoped(resource)
        if isinstance(resource, Session):
            self.check(resource, what)
            connection = resource.connection(bind_arguments={"clause": self._outbox})
        elif isinstance(resource, Connection):
            self.check(resource, what)
            connection = resource
        else:
            raise ConfigurationError(
                f"cannot {what} through a {type(resource).__qualname__}: SQLAlchemyOutbox "
                "takes a sqlalchemy.orm.Session or a sqlalchemy.engine.Connection"
            )
        self._refuse_autocommit(connection, what)
        return connection

    async def ajoined(self, resource: object, what: str) -> AsyncConnection:
        """The async connection of the caller's AsyncSession or AsyncConnection."""
        asyncio = asyncio_module()
        resource = unscoped(resource)
        connection: AsyncConnection
        if asyncio is not None and isinstance(resource, asyncio.AsyncSession):
            self.check_async(resource, what)
            connection = await resource.connection(bind_arguments={"clause": self._outbox})
        elif asyncio is not None and isinstance(resource, asyncio.AsyncConnection):
            self.check_async(resource, what)
            connection = resource
        else:
            raise ConfigurationError(
                f"cannot {what} asynchronously through a {type(resource).__qualname__}: "
                "SQLAlchemyOutbox takes a sqlalchemy.ext.asyncio.AsyncSession or "
                "AsyncConnection"
            )
        sync = connection.sync_connection
        if sync is not None:
            self._refuse_autocommit(sync, what)
        return connection

    def _refuse_autocommit(self, connection: Connection, what: str) -> None:
        if self._dialect.autocommits(connection):
            raise ConfigurationError(
                f"cannot {what} through a connection in AUTOCOMMIT mode: the rows would "
                "commit at once, whatever becomes of the application's transaction. Use a "
                "session or connection of an engine without isolation_level='AUTOCOMMIT'"
            )

    def open_transaction(self) -> Session | Connection | None:
        """A session or connection on this outbox's database with a transaction that this
        thread or task began and that is still open, or None."""
        mine = _database(self._engine.url)
        for resource in open_resources():
            engine = _engine_of(resource, self._outbox)
            if engine is not None and _database(engine.url) == mine:
                return resource
        return None


def asyncio_module() -> Any:
    """``sqlalchemy.ext.asyncio``, or None when it cannot load (greenlet is missing): then
    no resource can be an AsyncSession."""
    try:
        import sqlalchemy.ext.asyncio as module  # noqa: PLC0415 - needs greenlet
    except ImportError:
        return None
    return module


def unscoped(resource: object) -> object:
    """The session a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``) or an
    ``async_scoped_session`` stands for in this thread or task; anything else as it is."""
    if isinstance(resource, scoped_session):
        return resource()
    asyncio = asyncio_module()
    if asyncio is not None and isinstance(resource, asyncio.async_scoped_session):
        return resource()
    return resource


def _engine_of(resource: Session | Connection, table: sa.Table) -> Engine | None:
    """The engine ``resource`` runs ``table``'s statements on, or None if it has none."""
    if isinstance(resource, Connection):
        return resource.engine
    try:
        bind = resource.get_bind(clause=table)
    except sa_exc.UnboundExecutionError:
        return None
    return bind.engine if isinstance(bind, Connection) else bind


def _database(url: URL) -> tuple[object, ...]:
    """What names a database in a URL: not the driver, not the password."""
    name = url.get_backend_name()
    return ("mysql" if name == "mariadb" else name, url.username, url.host, url.port, url.database)
