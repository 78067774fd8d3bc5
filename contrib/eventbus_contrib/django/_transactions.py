"""Django's transactions as the unit of work: ``transaction.atomic()`` blocks, joined.

``ambient`` finds the transaction the current thread has open on the outbox's database;
the bus then writes a publish's outbox rows through that connection at once (inside the
innermost atomic block, so a rolled-back inner block drops them) and gives its commit
callbacks to ``transaction.on_commit`` (robust, so a failure there never stops the
application's own callbacks), which forgets the callbacks of a rolled-back savepoint.

``DjangoTransaction`` drives ``bus.transaction(connection)``: an atomic block, and nested
atomic blocks for its savepoints, so Django keeps its own books (savepoint ids, on_commit
callbacks per savepoint, needs_rollback) exactly as for ``transaction.atomic()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import connections, transaction

if TYPE_CHECKING:
    from ._core import CommitHook

__all__ = ["DjangoTransaction", "ambient", "in_transaction"]


class _RolledBack(Exception):  # noqa: N818 - handed to Atomic.__exit__, never raised
    """What ``Atomic.__exit__`` is told happened, so that it rolls back."""


def in_transaction(connection: Any) -> bool:
    """Whether ``connection`` has a transaction open: an atomic block, or autocommit
    turned off (manual transaction management). Never connects to ask."""
    if connection.in_atomic_block:
        return True
    return connection.connection is not None and not connection.autocommit


def ambient(alias: str) -> Any:
    """The current thread's connection to ``alias`` if it has a transaction open."""
    connection = connections[alias]
    return connection if in_transaction(connection) else None


def _exit(block: Any, *, commit: bool) -> None:
    if commit:
        block.__exit__(None, None, None)
    else:
        error = _RolledBack()
        block.__exit__(_RolledBack, error, None)


class DjangoTransaction:
    """``eventbus.typing.TransactionControl`` for the current thread's connection to
    ``alias`` (what ``transaction.atomic(using=alias)`` acts on)."""

    def __init__(self, alias: str) -> None:
        self._alias = alias
        self._block: Any = None

    def in_transaction(self) -> bool:
        return in_transaction(connections[self._alias])

    def begin(self) -> None:
        block = transaction.atomic(using=self._alias)
        block.__enter__()
        self._block = block

    def commit(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            _exit(block, commit=True)

    def rollback(self) -> None:
        # Also after a commit that failed: Atomic.__exit__ rolled back already then.
        block, self._block = self._block, None
        if block is not None:
            _exit(block, commit=False)

    def savepoint(self) -> object:
        block = transaction.atomic(using=self._alias)
        block.__enter__()
        return block

    def release(self, savepoint: object) -> None:
        _exit(savepoint, commit=True)

    def rollback_to(self, savepoint: object) -> None:
        _exit(savepoint, commit=False)

    def owner_commit(self) -> CommitHook | None:
        """``on_commit`` inside an atomic block; None under manual transaction
        management, where Django hears no commit."""
        if not connections[self._alias].in_atomic_block:
            return None
        alias = self._alias

        def hand_over(callbacks: list[Callable[[], None]]) -> None:
            for callback in callbacks:
                transaction.on_commit(callback, using=alias, robust=True)

        return hand_over
