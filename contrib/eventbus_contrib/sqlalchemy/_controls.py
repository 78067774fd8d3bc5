"""How ``bus.transaction()`` and ``bus.atransaction()`` drive the application's sessions
and connections: begin, commit, roll back, savepoints, and hearing the owner's commit.

``immediate`` (SQLite): the transaction takes the database's write lock at BEGIN, so a
busy database makes ``begin()`` wait for the busy timeout instead of failing later.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, cast

from sqlalchemy.orm import Session

from ._dialects.sqlite import IMMEDIATE, check_began
from ._tracking import after_session_commit

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncSession,
        AsyncSessionTransaction,
        AsyncTransaction,
    )
    from sqlalchemy.orm import SessionTransaction

    from ._core import CommitHook

__all__ = ["AsyncControl", "ConnectionControl", "SessionControl"]


class SessionControl:
    """``bus.transaction(session)``: the session's transaction, savepoints by begin_nested;
    a transaction the application began is joined, and its commit heard (Session events)."""

    def __init__(self, session: Session, table: sa.Table, *, immediate: bool) -> None:
        self._session = session
        self._table = table
        self._immediate = immediate

    def in_transaction(self) -> bool:
        return self._session.in_transaction()

    def begin(self) -> None:
        self._session.begin()
        if self._immediate:
            # Procure the connection now, so SQLite's write lock is taken at BEGIN (or
            # the busy timeout runs out here, leaving the session as it was).
            try:
                connection = self._session.connection(
                    bind_arguments={"clause": self._table}, execution_options={IMMEDIATE: True}
                )
                check_began(connection)
            except BaseException:
                self._session.rollback()
                raise

    def commit(self) -> None:
        self._session.commit()

    def rollback(self) -> None:
        self._session.rollback()

    def savepoint(self) -> object:
        return self._session.begin_nested()

    def release(self, savepoint: object) -> None:
        cast("SessionTransaction", savepoint).commit()

    def rollback_to(self, savepoint: object) -> None:
        cast("SessionTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        return functools.partial(after_session_commit, self._session)


class ConnectionControl:
    """``bus.transaction(connection)``: Core transactions, savepoints by begin_nested."""

    def __init__(self, connection: Connection, *, immediate: bool) -> None:
        self._connection = connection
        self._immediate = immediate

    def in_transaction(self) -> bool:
        return self._connection.in_transaction()

    def begin(self) -> None:
        connection = self._connection
        if not self._immediate:
            connection.begin()
            return
        connection.execution_options(**{IMMEDIATE: True})
        try:
            connection.begin()
            check_began(connection)
        except BaseException:
            connection.rollback()  # the busy timeout ran out: leave it as it was
            raise
        finally:
            connection.execution_options(**{IMMEDIATE: False})

    def commit(self) -> None:
        self._connection.commit()

    def rollback(self) -> None:
        self._connection.rollback()

    def savepoint(self) -> object:
        return self._connection.begin_nested()

    def release(self, savepoint: object) -> None:
        cast("sa.NestedTransaction", savepoint).commit()

    def rollback_to(self, savepoint: object) -> None:
        cast("sa.NestedTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        """None: Core has no event after a COMMIT succeeded (its ``commit`` event comes
        before the COMMIT is sent, which can still fail)."""
        return None


class AsyncControl:
    """``bus.atransaction(resource)`` for an AsyncSession or an AsyncConnection: both
    spell begin, commit, rollback and begin_nested (savepoints) the same way."""

    def __init__(self, resource: AsyncSession | AsyncConnection) -> None:
        self._resource = resource

    def in_transaction(self) -> bool:
        return self._resource.in_transaction()

    async def begin(self) -> None:
        await self._resource.begin()

    async def commit(self) -> None:
        await self._resource.commit()

    async def rollback(self) -> None:
        await self._resource.rollback()

    async def savepoint(self) -> object:
        return await self._resource.begin_nested()

    async def release(self, savepoint: object) -> None:
        await cast("AsyncSessionTransaction | AsyncTransaction", savepoint).commit()

    async def rollback_to(self, savepoint: object) -> None:
        await cast("AsyncSessionTransaction | AsyncTransaction", savepoint).rollback()

    def owner_commit(self) -> CommitHook | None:
        """An AsyncSession's commit is heard through its sync session's events; an
        AsyncConnection's cannot be (see ``ConnectionControl.owner_commit``)."""
        sync_session = getattr(self._resource, "sync_session", None)
        if isinstance(sync_session, Session):
            return functools.partial(after_session_commit, sync_session)
        return None
