"""Transactions: the unit of work that publishes belong to (``bus.transaction``).

One idea in one room: how ``bus.transaction(resource)`` drives a kind of connection
(begin, commit, savepoints: the stdlib sqlite3 control here, a store's own for its kind),
the *scopes* it opens, savepoints for nested scopes, joining a transaction that someone
else began, the outbox rows written just before the commit, refusing a publish that would
escape the caller's transaction, and the transaction a connection-taking handler runs in.

Scopes. Inside a scope, a durable publish writes its outbox rows through the scope's
connection, in the scope's transaction, and after-commit deliveries wait for the commit;
a rollback drops both (the rows vanish with the transaction, the deliveries are
forgotten). A scope opened inside another on the same connection is a savepoint: rolling
it back drops only what was published inside it.

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

Ambient transactions. Some frameworks open the application's transactions themselves and
say which one is open in this thread (Django: ``transaction.atomic()``): a store of theirs
offers ``SupportsAmbientTransaction``, and a durable or after-commit publish joins that
transaction without any ``bus.transaction()``, before any scope is looked at. Its rows are
written through the framework's connection at once, in whatever savepoint is innermost,
so a rolled-back inner block drops them; the commit callbacks go to the framework's own
commit hook (Django's ``on_commit``, which drops those of a rolled-back savepoint).

``EventBus`` holds one ``Transactions`` (its outbox's) and delegates ``transaction`` and
``atransaction`` to it; the store's optional abilities (``SupportsTransactionControl``,
``SupportsAsyncTransactionControl``, ``SupportsAsyncWrite``, ``SupportsOpenTransaction``)
are looked at once, when the bus is made.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .errors import ConfigurationError, TransactionScopeError
from .typing import (
    SupportsAmbientTransaction,
    SupportsAsyncTransactionControl,
    SupportsAsyncWrite,
    SupportsOpenTransaction,
    SupportsTransactionControl,
)

if TYPE_CHECKING:
    import uuid

    from ._records import PendingRow
    from .typing import AsyncTransactionControl, CommitHook, OutboxStore, TransactionControl

__all__ = ["AmbientScope", "SQLiteTransaction", "Scope", "Transactions", "current_scope"]

R = TypeVar("R")

_savepoints = itertools.count(1)

current_scope: ContextVar[Scope | None] = ContextVar("eventbus_current_scope", default=None)


class Publishing(Protocol):
    """What ``check_publish`` needs to know of a publish (the bus's route for its class)."""

    event_name: str
    """The event's class, as messages name it."""
    durable_names: tuple[str, ...]
    after_commit_names: tuple[str, ...]


class Transactions:
    """The transactions of one bus: ``transaction``/``atransaction`` on its outbox's kind
    of resource, the scopes they open, and a connection-taking handler's own transaction.

    A scope knows its ``Transactions`` (``Scope.owner``): a publish joins only a scope of
    its own bus.
    """

    __slots__ = (
        "_ambient",
        "_async_control",
        "_awrite",
        "_control",
        "_open_transaction",
        "joins_ambient",
        "outbox",
    )

    def __init__(self, outbox: OutboxStore | None) -> None:
        self.outbox = outbox
        self._control: Callable[[object], TransactionControl | None] | None = None
        self._async_control: Callable[[object], AsyncTransactionControl | None] | None = None
        self._awrite: Callable[[Any, Sequence[PendingRow]], Awaitable[None]] | None = None
        self._open_transaction: Callable[[], object | None] | None = None
        self._ambient: Callable[[], object | None] | None = None
        self.joins_ambient = False
        """Whether the outbox's framework opens transactions that publishes join
        (``SupportsAmbientTransaction``): the bus then asks ``ambient()`` first."""
        if outbox is None:
            return
        # The store's optional abilities, looked at once (an isinstance against a runtime
        # protocol costs microseconds: never on a publish).
        if isinstance(outbox, SupportsTransactionControl):
            self._control = outbox.transaction_control
        if isinstance(outbox, SupportsAsyncTransactionControl):
            self._async_control = outbox.async_transaction_control
        if isinstance(outbox, SupportsAsyncWrite):
            self._awrite = outbox.awrite
        if isinstance(outbox, SupportsOpenTransaction):
            self._open_transaction = outbox.open_transaction
        if isinstance(outbox, SupportsAmbientTransaction):
            self._ambient = outbox.ambient_transaction
            self.joins_ambient = True

    @contextlib.contextmanager
    def transaction(self, connection: R) -> Iterator[R]:
        """``EventBus.transaction``: the unit of work on ``connection``."""
        control = self._control_for(connection)
        outer = current_scope.get()
        if outer is not None and outer.connection is connection and outer.owner is self:
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
        """``EventBus.atransaction``: ``transaction`` for an async resource."""
        control = self._async_control_for(resource)
        outer = current_scope.get()
        if outer is not None and outer.connection is resource and outer.owner is self:
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
        assert self._awrite is not None  # checked when the control was given
        await self._awrite(resource, rows)

    def _write_rows(self, connection: object, rows: list[PendingRow]) -> None:
        outbox = self.outbox
        assert outbox is not None
        outbox.write(connection, rows)

    def check_publish(self, publish: Publishing, is_async: bool) -> None:
        """Before any handler runs: refuse a publish with durable or after-commit handlers
        that would escape the caller's transaction (the general path only)."""
        if self.joins_ambient:
            ambient = self.ambient()
            if ambient is not None:
                if publish.after_commit_names and not ambient.sees_commit:
                    raise TransactionScopeError(_unseen_ambient_commit(publish, ambient.connection))
                return
        scope = current_scope.get()
        if scope is not None and scope.owner is self:
            if publish.after_commit_names and not scope.sees_commit:
                raise TransactionScopeError(_unseen_commit(publish, scope.connection))
            return
        # No scope of this bus: a transaction open in this thread or task on the outbox's
        # database would be bypassed. Only the outbox knows which are open.
        find = self._open_transaction
        resource = None if find is None else find()
        if resource is not None:
            raise TransactionScopeError(_bypassed(publish, resource, is_async=is_async))

    def ambient(self) -> AmbientScope | None:
        """A scope in the transaction the outbox's framework has open in this thread or
        task (``SupportsAmbientTransaction``), or None. What a publish puts in it is
        handed over at once with ``settle``."""
        find = self._ambient
        resource = None if find is None else find()
        if resource is None:
            return None
        return AmbientScope(self, resource, self._control_for(resource).owner_commit())

    def settle(self, scope: AmbientScope) -> None:
        """Write what a publish put in an ambient scope through its resource, now (in the
        innermost savepoint open there), and hand its callbacks to the commit hook."""
        if scope.rows:
            self._write_rows(scope.connection, scope.rows)
        _hand_over(scope.hook, scope.committed())

    def handler_transaction(
        self, handler: str, envelope_id: uuid.UUID, run: Callable[[Any], object]
    ) -> bool:
        """Run ``run(connection)`` in a transaction of the outbox's own, with the inbox mark
        of (``handler``, ``envelope_id``); whether it ran.

        The effects and the mark commit together (exactly once); a duplicate finds the mark
        and runs nothing (False). What ``run`` publishes on this bus belongs to that
        transaction too: its durable rows are written in it and its after-commit handlers
        wait for its commit, so a follow-up event is published exactly when the effects
        are. Sync: call it on a worker thread.
        """
        outbox = self.outbox
        assert outbox is not None  # subscribe() refuses a connection-taking handler without one
        with outbox.handler_transaction() as connection:
            if not outbox.mark(handler, envelope_id, connection):
                return False  # a duplicate: done before, with its effects, in one commit
            scope = Scope(self, connection)
            token = current_scope.set(scope)
            try:
                run(connection)
                if scope.rows:
                    outbox.write(connection, scope.rows)
            finally:
                current_scope.reset(token)
        for callback in scope.committed():
            callback()
        return True

    def _control_for(self, resource: Any) -> TransactionControl:
        """The control for ``resource``: the outbox store's, else the stdlib sqlite3 one."""
        if self._control is not None:
            control = self._control(resource)
            if control is not None:
                return control
        if isinstance(resource, sqlite3.Connection):
            return SQLiteTransaction(resource)
        raise ConfigurationError(
            f"bus.transaction() cannot drive a {type(resource).__qualname__}: pass a "
            "sqlite3.Connection, or configure an outbox whose store knows this kind of "
            "connection (for SQLAlchemy sessions, eventbus_contrib.sqlalchemy)"
        )

    def _async_control_for(self, resource: Any) -> AsyncTransactionControl:
        """The async control for ``resource``, from the outbox store (which must also be
        able to write its rows asynchronously, ``awrite``)."""
        control = None if self._async_control is None else self._async_control(resource)
        if control is None:
            raise ConfigurationError(
                f"bus.atransaction() cannot drive a {type(resource).__qualname__}: pass an "
                "async session or connection that the bus's outbox knows (for SQLAlchemy, an "
                "AsyncSession with EventBus(outbox=eventbus_contrib.sqlalchemy."
                "SQLAlchemyOutbox(engine))); for a sync connection, use bus.transaction()"
            )
        if self._awrite is None:
            raise ConfigurationError(
                f"bus.atransaction() needs an outbox store that writes asynchronously: "
                f"{type(self.outbox).__qualname__} has async_transaction_control() but no "
                "awrite()"
            )
        return control


class Scope:
    """One transaction (or savepoint) on one connection, and what waits for its commit."""

    __slots__ = ("_after_commit", "connection", "owner", "parent", "rows", "sees_commit")

    def __init__(
        self,
        owner: Transactions,
        connection: Any,
        parent: Scope | None = None,
        *,
        sees_commit: bool = True,
    ) -> None:
        self.owner = owner
        """The bus's ``Transactions`` that opened it: a publish joins only its own bus's
        scopes (another bus's outbox is not in this transaction)."""
        self.connection = connection
        self.parent = parent
        self.sees_commit: bool = sees_commit if parent is None else parent.sees_commit
        """Whether the bus learns that this transaction committed. False only in a scope
        that joined a transaction its resource cannot report the commit of (a stdlib
        sqlite3 connection, a SQLAlchemy Connection): after-commit publishes are refused
        there, since nothing could tell when (or whether) to run their handlers."""
        self._after_commit: list[Callable[[], None]] = []
        self.rows: list[PendingRow] = []
        """Outbox rows published in this scope, written in one batch just before COMMIT."""

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the outermost transaction has committed."""
        self._after_commit.append(callback)

    def committed(self) -> list[Callable[[], None]]:
        """This scope committed: hand its callbacks to the parent, or return them to run."""
        callbacks, self._after_commit = self._after_commit, []
        if self.parent is not None:
            self.parent._after_commit.extend(callbacks)
            self.parent.rows.extend(self.rows)
            self.rows = []
            return []
        return callbacks

    def rolled_back(self) -> None:
        """This scope rolled back: forget what waited for it."""
        self._after_commit.clear()
        self.rows.clear()


class AmbientScope(Scope):
    """A publish's share of a transaction its framework opened (``Transactions.ambient``):
    written and handed over at once, by ``Transactions.settle``."""

    __slots__ = ("hook",)

    def __init__(self, owner: Transactions, connection: Any, hook: CommitHook | None) -> None:
        super().__init__(owner, connection, sees_commit=hook is not None)
        self.hook = hook
        """The framework's commit hook (Django's ``on_commit``), or None where that
        transaction's commit cannot be seen (after-commit publishes are refused)."""


class SQLiteTransaction:
    """A stdlib sqlite3 connection: ``BEGIN IMMEDIATE`` (never a deferred transaction
    that reads, then fails to write with SQLITE_BUSY at once), and named savepoints."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def begin(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._connection.execute("COMMIT")

    def rollback(self) -> None:
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")

    def savepoint(self) -> object:
        name = f"eventbus_sp_{next(_savepoints)}"
        self._connection.execute(f"SAVEPOINT {name}")
        return name

    def release(self, savepoint: object) -> None:
        self._connection.execute(f"RELEASE {savepoint}")

    def rollback_to(self, savepoint: object) -> None:
        self._connection.execute(f"ROLLBACK TO {savepoint}")
        self._connection.execute(f"RELEASE {savepoint}")

    def owner_commit(self) -> CommitHook | None:
        """None: the sqlite3 module has no commit hook, and ``in_transaction`` turning
        False does not say whether the transaction committed or rolled back. Durable
        rows still join (they commit or vanish with the owner's transaction)."""
        return None


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


def _bypassed(publish: Publishing, resource: object, *, is_async: bool) -> str:
    event = publish.event_name
    kind = _kind(resource)
    argument = "session" if "Session" in kind else "connection"
    if publish.durable_names:
        names = ", ".join(publish.durable_names)
        harm = (
            f"{event} has durable handlers ({names}): its outbox rows would commit on their "
            "own, whatever becomes of that transaction"
        )
    else:
        names = ", ".join(publish.after_commit_names)
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


def _unseen_commit(publish: Publishing, resource: object) -> str:
    event = publish.event_name
    kind = _kind(resource)
    names = ", ".join(publish.after_commit_names)
    return (
        f"{event} has after-commit handlers ({names}), but this bus.transaction() joined a "
        f"transaction that the {kind} had begun before it, and a {kind} cannot tell the "
        "bus when (or whether) it commits. Let bus.transaction() begin the transaction "
        "(commit or roll back first), or with SQLAlchemy join through a Session, which "
        "reports its commit. Durable handlers are fine here. No handler was run"
    )


def _unseen_ambient_commit(publish: Publishing, resource: object) -> str:
    names = ", ".join(publish.after_commit_names)
    return (
        f"{publish.event_name} has after-commit handlers ({names}), but the transaction open "
        f"on this {_kind(resource)} cannot tell the bus when (or whether) it commits: it was "
        "begun outside the framework's transaction blocks (with Django: autocommit turned "
        "off, outside transaction.atomic()). Publish inside an atomic block, whose commit "
        "the bus hears. Durable handlers are fine here. No handler was run"
    )
