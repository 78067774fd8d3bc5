"""Transactions on a bus: the unit of work that publishes belong to (``bus.transaction``).

A mixin of ``EventBus``, kept apart because it owns one idea: beginning, committing and
rolling back through the outbox store's transaction controls, savepoints for nested
scopes, and the outbox rows written just before the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._scope import Scope, current_scope
from ._transactions import (
    AsyncTransactionControl,
    TransactionControl,
    async_control_for,
    control_for,
)
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .outbox import PendingRow
    from .typing import OutboxStore

__all__ = ["Transactions"]

R = TypeVar("R")


class Transactions:
    """``transaction`` and ``atransaction`` for ``EventBus`` (which holds ``_outbox``)."""

    __slots__ = ()
    _outbox: OutboxStore | None

    @contextlib.contextmanager
    def transaction(self, connection: R) -> Iterator[R]:
        """A transaction on ``connection`` that publishes belong to.

        Begins on entry (``BEGIN IMMEDIATE`` on sqlite3), commits on a clean exit, rolls
        back when the block raises. Durable publishes inside write their outbox rows in
        this transaction (in one batch, just before the commit); after-commit handlers
        wait for the commit; a rollback drops both. Nested on the same connection, it is
        a savepoint: rolling it back drops only what was published inside it.
        """
        control = control_for(connection, self._outbox)
        outer = current_scope.get()
        if outer is not None and outer.connection is connection:
            yield from self._savepoint(outer, control, connection)
            return
        if control.in_transaction():
            raise ConfigurationError(
                "this connection already has an open transaction: let bus.transaction() "
                "begin it (commit or roll back first), so the outbox rows join it"
            )
        control.begin()
        scope = Scope(self, connection)
        token = current_scope.set(scope)
        try:
            yield connection
        except BaseException:
            control.rollback()
            scope.rolled_back()
            raise
        else:
            try:
                if scope.rows:
                    self._write_rows(connection, scope.rows)
                control.commit()
            except BaseException:
                control.rollback()
                scope.rolled_back()
                raise
            callbacks = scope.committed()
        finally:
            current_scope.reset(token)
        for callback in callbacks:
            callback()

    def _savepoint(self, outer: Scope, control: TransactionControl, connection: R) -> Iterator[R]:
        savepoint = control.savepoint()
        scope = Scope(self, connection, parent=outer)
        token = current_scope.set(scope)
        try:
            yield connection
        except BaseException:
            control.rollback_to(savepoint)
            scope.rolled_back()
            raise
        else:
            control.release(savepoint)
            scope.committed()
        finally:
            current_scope.reset(token)

    @contextlib.asynccontextmanager
    async def atransaction(self, resource: R) -> AsyncIterator[R]:
        """``transaction()`` for an async resource (a SQLAlchemy ``AsyncSession``).

        The same unit of work, awaited: begins on entry, writes the durable rows and
        commits on a clean exit, rolls back when the block raises; after-commit handlers
        wait for the commit. Nested on the same resource, it is a savepoint. Publish
        inside with ``bus.publish`` or ``await bus.apublish``: neither does I/O here.
        """
        control = async_control_for(resource, self._outbox)
        outer = current_scope.get()
        if outer is not None and outer.connection is resource:
            async with self._asavepoint(outer, control, resource):
                yield resource
            return
        if control.in_transaction():
            raise ConfigurationError(
                "this session already has an open transaction: let bus.atransaction() "
                "begin it (commit or roll back first), so the outbox rows join it"
            )
        await control.begin()
        scope = Scope(self, resource)
        token = current_scope.set(scope)
        try:
            yield resource
        except BaseException:
            await control.rollback()
            scope.rolled_back()
            raise
        else:
            try:
                if scope.rows:
                    await self._awrite_rows(resource, scope.rows)
                await control.commit()
            except BaseException:
                await control.rollback()
                scope.rolled_back()
                raise
            callbacks = scope.committed()
        finally:
            current_scope.reset(token)
        for callback in callbacks:
            callback()

    @contextlib.asynccontextmanager
    async def _asavepoint(
        self, outer: Scope, control: AsyncTransactionControl, resource: object
    ) -> AsyncIterator[None]:
        savepoint = await control.savepoint()
        scope = Scope(self, resource, parent=outer)
        token = current_scope.set(scope)
        try:
            yield
        except BaseException:
            await control.rollback_to(savepoint)
            scope.rolled_back()
            raise
        else:
            await control.release(savepoint)
            scope.committed()
        finally:
            current_scope.reset(token)

    async def _awrite_rows(self, resource: object, rows: list[PendingRow]) -> None:
        outbox: Any = self._outbox
        await outbox.awrite(resource, rows)

    def _write_rows(self, connection: object, rows: list[PendingRow]) -> None:
        outbox = self._outbox
        assert outbox is not None
        outbox.write(connection, rows)
