"""Transaction scopes: the unit of work that a publish belongs to.

Inside a scope, a durable publish writes its outbox rows through the scope's connection,
in the scope's transaction, and after-commit deliveries wait for the commit; a rollback
drops both (the rows vanish with the transaction, the deliveries are forgotten). A scope
opened inside another on the same connection is a savepoint: rolling it back drops only
what was published inside it. A scope may also join a transaction that someone else
began (the application, a framework, another bus): then its commit is that owner's, and
``sees_commit`` says whether the bus will hear of it (after-commit handlers need that).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

__all__ = ["Scope", "current_scope"]

current_scope: ContextVar[Scope | None] = ContextVar("eventbus_current_scope", default=None)


class Scope:
    """One transaction (or savepoint) on one connection, and what waits for its commit."""

    __slots__ = ("_after_commit", "bus", "connection", "parent", "rows", "sees_commit")

    def __init__(
        self,
        bus: object,
        connection: Any,
        parent: Scope | None = None,
        *,
        sees_commit: bool = True,
    ) -> None:
        self.bus = bus
        self.connection = connection
        self.parent = parent
        self.sees_commit: bool = sees_commit if parent is None else parent.sees_commit
        """Whether the bus learns that this transaction committed. False only in a scope
        that joined a transaction its resource cannot report the commit of (a stdlib
        sqlite3 connection, a SQLAlchemy Connection): after-commit publishes are refused
        there, since nothing could tell when (or whether) to run their handlers."""
        self._after_commit: list[Callable[[], None]] = []
        self.rows: list[Any] = []
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
