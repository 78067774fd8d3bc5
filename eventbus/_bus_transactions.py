"""Transactions on a bus: the unit of work that publishes belong to (``bus.transaction``).

A mixin of ``EventBus``, kept apart because it owns one idea: beginning, committing and
rolling back through the outbox store's transaction controls, savepoints for nested
scopes, joining a transaction that someone else began, the outbox rows written just
before the commit, and refusing a publish that would escape the caller's transaction.

Joining. Frameworks begin the transaction themselves (a FastAPI dependency that yields a
session inside ``session.begin()``, Flask-SQLAlchemy's scoped session, ``with
sessionmaker.begin()``), so ``bus.transaction(resource)`` on a resource already in a
transaction joins it instead of refusing it:

- the block is a savepoint in the owner's transaction, so it stays one unit of work: an
  exception inside it rolls back what the block wrote and drops what it published, then
  propagates to the owner, who decides about the rest. An owner that swallows it and
  commits commits neither the block's writes nor its events, never one without the other;
- the block's outbox rows are written at its end, inside that savepoint, in one batch:
  they commit with the owner's transaction and vanish with its rollback, whoever ends it,
  so they are never lost nor written twice, and a write that fails fails the block;
- after-commit handlers (and the relay's wake-up) wait for the owner's commit, and are
  dropped when the owner rolls back the transaction, or a savepoint of its around the
  block. That needs the resource to report its commit (a SQLAlchemy Session does). A
  stdlib sqlite3 connection or a SQLAlchemy Connection cannot: joined there, durable rows
  work as above, the relay finds them by polling, and an after-commit publish is refused
  (``TransactionScopeError``) rather than run on a guess.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from ._scope import Scope, current_scope
from ._transactions import (
    AsyncTransactionControl,
    CommitHook,
    TransactionControl,
    async_control_for,
    control_for,
)
from .errors import TransactionScopeError

if TYPE_CHECKING:
    from ._bus import _Route
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

        On a connection or session already in a transaction (begun by the application or
        a framework), it joins that transaction: the block is a savepoint in it, its rows
        are written at the end of the block, and whoever began the transaction commits
        or rolls back everything, after-commit handlers waiting for that commit.
        """
        control = control_for(connection, self._outbox)
        outer = current_scope.get()
        if outer is not None and outer.connection is connection and outer.bus is self:
            yield from self._savepoint(outer, control, connection)
            return
        if control.in_transaction():
            yield from self._join(outer, control, connection)
            return
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

    def _join(self, outer: Scope | None, control: TransactionControl, connection: R) -> Iterator[R]:
        """Join the transaction already open on ``connection``: a savepoint in it, the rows
        written at the end of the block, the callbacks handed to the owner's commit."""
        handover = _handover(outer, connection, control.owner_commit())
        savepoint = control.savepoint()
        scope = Scope(self, connection, sees_commit=handover is not None)
        token = current_scope.set(scope)
        try:
            yield connection
            _check_still_open(control.in_transaction(), connection)
            if scope.rows:
                self._write_rows(connection, scope.rows)
        except BaseException:
            if control.in_transaction():
                control.rollback_to(savepoint)
            scope.rolled_back()
            raise
        else:
            control.release(savepoint)
        finally:
            current_scope.reset(token)
        _hand_over(handover, scope.committed())

    @contextlib.asynccontextmanager
    async def atransaction(self, resource: R) -> AsyncIterator[R]:
        """``transaction()`` for an async resource (a SQLAlchemy ``AsyncSession``).

        The same unit of work, awaited: begins on entry, writes the durable rows and
        commits on a clean exit, rolls back when the block raises; after-commit handlers
        wait for the commit. Nested on the same resource, it is a savepoint. On a
        resource already in a transaction, it joins it, as ``transaction()`` does.
        Publish inside with ``bus.publish`` or ``await bus.apublish``: neither does I/O
        here.
        """
        control = async_control_for(resource, self._outbox)
        outer = current_scope.get()
        if outer is not None and outer.connection is resource and outer.bus is self:
            async with self._asavepoint(outer, control, resource):
                yield resource
            return
        if control.in_transaction():
            async with self._ajoin(outer, control, resource):
                yield resource
            return
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

    @contextlib.asynccontextmanager
    async def _ajoin(
        self, outer: Scope | None, control: AsyncTransactionControl, resource: object
    ) -> AsyncIterator[None]:
        """``_join`` for an async resource."""
        handover = _handover(outer, resource, control.owner_commit())
        savepoint = await control.savepoint()
        scope = Scope(self, resource, sees_commit=handover is not None)
        token = current_scope.set(scope)
        try:
            yield
            _check_still_open(control.in_transaction(), resource)
            if scope.rows:
                await self._awrite_rows(resource, scope.rows)
        except BaseException:
            if control.in_transaction():
                await control.rollback_to(savepoint)
            scope.rolled_back()
            raise
        else:
            await control.release(savepoint)
        finally:
            current_scope.reset(token)
        _hand_over(handover, scope.committed())

    async def _awrite_rows(self, resource: object, rows: list[PendingRow]) -> None:
        outbox: Any = self._outbox
        await outbox.awrite(resource, rows)

    def _write_rows(self, connection: object, rows: list[PendingRow]) -> None:
        outbox = self._outbox
        assert outbox is not None
        outbox.write(connection, rows)

    def _check_scope(self, route: _Route, *, is_async: bool) -> None:
        """Before any handler runs: refuse a durable or after-commit publish that would
        escape the caller's transaction (the general path only, and only for events with
        such handlers)."""
        scope = current_scope.get()
        if scope is not None and scope.bus is self:
            if route.after_commit and not scope.sees_commit:
                raise TransactionScopeError(_unseen_commit(route, scope.connection))
            return
        # No scope of this bus: a transaction open in this thread or task on the outbox's
        # database would be bypassed. Only the outbox knows which are open.
        find = getattr(self._outbox, "open_transaction", None)
        resource = None if find is None else find()
        if resource is not None:
            raise TransactionScopeError(_bypassed(route, resource, is_async=is_async))


def _handover(outer: Scope | None, resource: object, hook: CommitHook | None) -> CommitHook | None:
    """Where a joined scope's callbacks go: to the scope of another bus that began this
    transaction (it hears its own commit), else to the resource's commit hook."""
    if outer is None or outer.connection is not resource:
        return hook
    if not outer.sees_commit:
        return None

    def to_outer(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            outer.after_commit(callback)

    return to_outer


def _check_still_open(open_: bool, resource: object) -> None:
    """The transaction a scope joined must outlive the block: committed or rolled back
    inside it, nothing says which, so what the block published cannot follow it."""
    if open_:
        return
    kind = _kind(resource)
    raise TransactionScopeError(
        f"the transaction that bus.transaction() joined on this {kind} ended inside the "
        "block (a commit or rollback was called in it), so what the block published was "
        "dropped: no outbox row written, no after-commit handler run. Commit or roll back "
        "after the block, never inside it"
    )


def _hand_over(handover: CommitHook | None, callbacks: list[Callable[[], None]]) -> None:
    if handover is not None:
        handover(callbacks)
        return
    # The commit cannot be seen, so after-commit publishes were refused: what is left
    # wakes the relay, which then finds the rows by polling once the owner commits.
    for callback in callbacks:
        callback()


def _kind(resource: object) -> str:
    """What a resource is called in messages (not the outbox's private subclass)."""
    if isinstance(resource, sqlite3.Connection):
        return "sqlite3 connection"
    return type(resource).__qualname__


def _bypassed(route: _Route, resource: object, *, is_async: bool) -> str:
    event = route.info.cls.__qualname__
    kind = _kind(resource)
    argument = "session" if "Session" in kind else "connection"
    if route.durable:
        names = ", ".join(h.name for h in route.durable)
        harm = (
            f"{event} has durable handlers ({names}): its outbox rows would commit on their "
            "own, whatever becomes of that transaction"
        )
    else:
        names = ", ".join(h.name for h in route.after_commit)
        harm = (
            f"{event} has after-commit handlers ({names}): they would run now, before that "
            "transaction commits, and even if it rolls back"
        )
    fix = (
        f"'async with bus.atransaction({argument}):' (or 'with bus.transaction({argument}):')"
        if is_async
        else f"'with bus.transaction({argument}):'"
    )
    return (
        f"this publish is outside bus.transaction() while a {kind} of this thread or task "
        f"has a transaction open on the outbox's database. {harm}. Publish inside {fix}: it "
        "joins the open transaction, so the event commits or rolls back with it. "
        "No handler was run"
    )


def _unseen_commit(route: _Route, resource: object) -> str:
    event = route.info.cls.__qualname__
    kind = _kind(resource)
    names = ", ".join(h.name for h in route.after_commit)
    return (
        f"{event} has after-commit handlers ({names}), but this bus.transaction() joined a "
        f"transaction that the {kind} had begun before it, and a {kind} cannot tell the "
        "bus when (or whether) it commits. Let bus.transaction() begin the transaction "
        "(commit or roll back first), or with SQLAlchemy join through a Session, which "
        "reports its commit. Durable handlers are fine here. No handler was run"
    )
