"""How ``bus.transaction(resource)`` drives a kind of connection: begin, commit, savepoints.

The core knows stdlib ``sqlite3`` connections; an outbox store for another library (the
SQLAlchemy integration) supplies a control for its own resources. ``bus.atransaction``
drives async resources (an ``AsyncSession``) through an ``AsyncTransactionControl``,
which only an outbox store can supply.

A resource already in a transaction is joined, not begun: the bus then needs to hear of
the owner's commit to run after-commit handlers, which ``owner_commit`` offers where the
resource can report it.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

from .errors import ConfigurationError

__all__ = [
    "AsyncTransactionControl",
    "CommitHook",
    "SQLiteTransaction",
    "TransactionControl",
    "async_control_for",
    "control_for",
]

_savepoints = itertools.count(1)

CommitHook = Callable[[list[Callable[[], None]]], None]
"""Keeps callbacks until the transaction open on a resource commits (then runs them), and
drops them if the part of that transaction open at the call rolls back."""


class TransactionControl(Protocol):
    """Begin, end and nest transactions on one resource (connection or session)."""

    def in_transaction(self) -> bool: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def savepoint(self) -> object: ...

    def release(self, savepoint: object) -> None: ...

    def rollback_to(self, savepoint: object) -> None: ...

    def owner_commit(self) -> CommitHook | None:
        """For a transaction open before ``bus.transaction()`` (which joins it): how to
        wait for its commit, or None when this resource cannot report it."""


class AsyncTransactionControl(Protocol):
    """``TransactionControl`` for an async resource: the same steps, awaited."""

    def in_transaction(self) -> bool: ...

    async def begin(self) -> None: ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    async def savepoint(self) -> object: ...

    async def release(self, savepoint: object) -> None: ...

    async def rollback_to(self, savepoint: object) -> None: ...

    def owner_commit(self) -> CommitHook | None:
        """As ``TransactionControl.owner_commit`` (registering callbacks does no I/O)."""


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


def control_for(resource: Any, outbox: Any) -> TransactionControl:
    """The control for ``resource``: the outbox store's, else the stdlib sqlite3 one."""
    supply = getattr(outbox, "transaction_control", None)
    if supply is not None:
        control: TransactionControl | None = supply(resource)
        if control is not None:
            return control
    if isinstance(resource, sqlite3.Connection):
        return SQLiteTransaction(resource)
    raise ConfigurationError(
        f"bus.transaction() cannot drive a {type(resource).__qualname__}: pass a "
        "sqlite3.Connection, or configure an outbox whose store knows this kind of "
        "connection (for SQLAlchemy sessions, eventbus_contrib.sqlalchemy)"
    )


def async_control_for(resource: Any, outbox: Any) -> AsyncTransactionControl:
    """The async control for ``resource``, from the outbox store (which must also be able
    to write its rows asynchronously, ``awrite``)."""
    supply = getattr(outbox, "async_transaction_control", None)
    control: AsyncTransactionControl | None = None if supply is None else supply(resource)
    if control is None:
        raise ConfigurationError(
            f"bus.atransaction() cannot drive a {type(resource).__qualname__}: pass an "
            "async session or connection that the bus's outbox knows (for SQLAlchemy, an "
            "AsyncSession with EventBus(outbox=eventbus_contrib.sqlalchemy."
            "SQLAlchemyOutbox(engine))); for a sync connection, use bus.transaction()"
        )
    if getattr(outbox, "awrite", None) is None:
        raise ConfigurationError(
            f"bus.atransaction() needs an outbox store that writes asynchronously: "
            f"{type(outbox).__qualname__} has async_transaction_control() but no awrite()"
        )
    return control
