"""The stores' own Django connection, and the application's connections they are handed.

A store's own work (the relay's claims, completions and reschedules, inbox reads, the
dead letters) runs on a connection of the store's own, made from ``DATABASES[alias]``
with ``connections.create_connection``: never the thread's ``connections[alias]``, which
belongs to whatever the thread is doing (a request's atomic block, a test's transaction).
Threads share it under a lock, as the stdlib SQLite store shares its connection; each
piece of work is one short transaction of its own (``BEGIN IMMEDIATE`` on SQLite), and a
connection that broke is closed, to be opened again by the next piece of work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy

from ._core import ConfigurationError
from ._sql import Statements, statements_for

__all__ = ["OwnConnection", "application_connection", "check_alias", "statements_of"]


def check_alias(alias: object, what: str) -> str:
    """``alias`` if it names a database of ``DATABASES`` on a vendor the stores run on."""
    if not isinstance(alias, str) or not alias:
        raise ConfigurationError(
            f"{what}: the database must be an alias of DATABASES, got {alias!r}"
        )
    databases = settings.DATABASES
    if alias not in databases:
        known = ", ".join(repr(name) for name in databases) or "none"
        raise ConfigurationError(
            f"{what}: there is no database {alias!r} in settings.DATABASES (there are: {known})"
        )
    statements_of(alias, what)
    return alias


def statements_of(alias: str, what: str) -> Statements:
    vendor = connections[alias].vendor
    found = statements_for(vendor)
    if found is None:
        raise ConfigurationError(
            f"{what}: the database {alias!r} is {vendor}; eventbus_contrib.django runs on "
            "SQLite and PostgreSQL (for MariaDB or MySQL, use eventbus_contrib.sqlalchemy "
            "on an engine of that database)"
        )
    return found


def application_connection(resource: object, alias: str, what: str) -> Any:
    """The Django connection ``resource`` is (``django.db.connection``, or a
    ``connections[...]``), refused unless it is on ``alias``."""
    if not isinstance(resource, BaseDatabaseWrapper | ConnectionProxy):
        raise ConfigurationError(
            f"{what} takes a Django connection (django.db.connection, or "
            f"connections[{alias!r}]), got {type(resource).__qualname__}"
        )
    theirs = resource.alias
    if theirs != alias:
        raise ConfigurationError(
            f"{what} got a connection to the database {theirs!r}, but the outbox is in "
            f"{alias!r}: its rows must be written in a transaction of that database"
        )
    return resource


def _in_memory(wrapper: Any) -> bool:
    if wrapper.vendor != "sqlite":
        return False
    name = str(wrapper.settings_dict.get("NAME") or "")
    return name in ("", ":memory:") or "mode=memory" in name


class OwnConnection:
    """A connection to ``alias`` of the store's own, shared by threads under a lock.

    ``failure(what, error)`` makes the store's error (``OutboxError``, a dead-letter
    store's error) from a database error; ``closed(what)`` the one for a closed store.
    """

    def __init__(
        self,
        alias: str,
        *,
        failure: Callable[[str, BaseException], Exception],
        closed: Callable[[str], Exception],
    ) -> None:
        self.alias = alias
        self._failure = failure
        self._closed_error = closed
        self._lock = threading.Lock()
        self._wrapper: Any = None
        self.closed = False

    def _open(self, what: str) -> Any:
        if self.closed:
            raise self._closed_error(what)
        wrapper = self._wrapper
        if wrapper is None:
            wrapper = connections.create_connection(self.alias)
            # Shared by the relay's threads, one at a time (under the lock).
            wrapper.inc_thread_sharing()
            if _in_memory(wrapper):
                raise ConfigurationError(
                    f"cannot {what}: the database {self.alias!r} is an in-memory SQLite "
                    "database, private to each connection; the outbox, its relay and the "
                    "dead letters need a database file (in tests, set "
                    f"DATABASES[{self.alias!r}]['TEST']['NAME'] to a file path)"
                )
            self._wrapper = wrapper
        wrapper.ensure_connection()
        if not wrapper.get_autocommit():  # AUTOCOMMIT=False in DATABASES: ours begin explicitly
            wrapper.set_autocommit(True)
        return wrapper

    @contextmanager
    def cursor(self, what: str, *, transaction: bool, statements: Statements) -> Iterator[Any]:
        """A cursor in a short transaction of this connection's own (committed on a clean
        exit), or in autocommit for reads; database errors become the store's."""
        with self._lock:
            try:
                wrapper = self._open(what)
                with wrapper.cursor() as cursor:
                    if not transaction:
                        yield cursor
                        return
                    cursor.execute(statements.begin)
                    try:
                        yield cursor
                    except BaseException:
                        with suppress(Exception):
                            cursor.execute("ROLLBACK")
                        raise
                    cursor.execute("COMMIT")
            except (DatabaseError, *_driver_errors(self._wrapper)) as error:
                self._drop()
                raise self._failure(what, error) from error

    def _drop(self) -> None:
        """Close a connection that failed: the next piece of work opens a new one (it may
        have been cut, or be stuck in a failed transaction)."""
        wrapper, self._wrapper = self._wrapper, None
        if wrapper is not None:
            with suppress(Exception):
                wrapper.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._drop()


def _driver_errors(wrapper: Any) -> tuple[type[BaseException], ...]:
    """The driver's own error class: a statement run on a cursor of Django's raises
    Django's errors, but BEGIN and COMMIT issued around it may raise the driver's."""
    if wrapper is None:
        return ()
    return (wrapper.Database.Error,)
