"""SQLAlchemy transactions that the bus did not begin: joining them, and seeing them.

Two things, for the outbox and its transaction controls:

- **After the owner's commit.** ``bus.transaction(session)`` on a session already in a
  transaction joins it; what waits for the commit (after-commit handlers, the relay's
  wake-up) is kept on the session (``session.info``) under the transaction that was
  innermost when it was handed over, and the ``Session`` events move it along: a released
  savepoint hands it to its parent, the root's commit runs it, and a transaction that
  ends any other way (rolled back, closed) drops it. ``after_commit`` fires only once the
  database has committed. A Core ``Connection`` has no such event (its ``commit`` event
  fires before COMMIT is sent, and a COMMIT can still fail), so a joined Connection
  cannot run after-commit handlers: the core refuses them there.
- **Which transactions are open here.** A durable publish outside ``bus.transaction()``
  while the same thread or task holds a transaction on the outbox's database would
  commit its row on the side. To refuse it, the root transactions of sessions (begun
  explicitly or by autobegin) and of the outbox engine's connections are noted, weakly,
  in a context variable, with the thread or task that began them; the outbox asks
  ``open_resources()`` at such a publish. A transaction begun in another thread (a
  FastAPI sync dependency runs in a worker thread of its own) is not seen from here.

The ``Session`` listeners are installed once per process, on the class (sessions of any
sessionmaker, and the sync side of every AsyncSession, are subclasses or instances of
it): each is a dict lookup for sessions the bus never joined. Nothing needs removing when
a transaction ends: its pending entry is dropped then, and the listeners stay idle.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from ._core import logger

__all__ = ["after_session_commit", "open_resources", "watch_engine", "watch_sessions"]

_PENDING: Final = "eventbus_after_commit"
"""The ``session.info`` key of what waits for commits: {transaction: [callbacks]}."""

_Opened = tuple["weakref.ref[SessionTransaction | Connection]", object]

_opened: ContextVar[tuple[_Opened, ...]] = ContextVar("eventbus_sqlalchemy_opened", default=())
"""Root transactions begun in this context, each with the thread or task that began it
(a copied context, in a child task or a worker thread, is not the one that began them)."""

_install = threading.Lock()


# -- after the owner's commit ------------------------------------------------------------


def after_session_commit(session: Session, callbacks: list[Callable[[], None]]) -> None:
    """Run ``callbacks`` once ``session``'s transaction commits; drop them if it, or the
    savepoint innermost now, rolls back (or the session closes first)."""
    current = session.get_nested_transaction() or session.get_transaction()
    if current is None or not callbacks:  # nothing is open: nothing can commit them
        return
    pending: dict[SessionTransaction, list[Callable[[], None]]]
    pending = session.info.setdefault(_PENDING, {})
    pending.setdefault(current, []).extend(callbacks)


def _committed(session: Session) -> None:
    """``after_commit`` (of the root, or of a savepoint, released): run or pass on."""
    pending = session.info.get(_PENDING)
    if not pending:
        return
    # During this event the committed transaction is still the session's innermost.
    committed = session.get_nested_transaction() or session.get_transaction()
    callbacks = pending.pop(committed, None) if committed is not None else None
    if not callbacks:
        return
    enclosing = _enclosing(committed)
    if enclosing is not None:
        pending.setdefault(enclosing, []).extend(callbacks)
        return
    for callback in callbacks:
        try:
            callback()
        except Exception:
            # The transaction has committed: raising here would tell the application
            # that it failed, inviting it to do the work twice.
            logger.exception("after-commit work failed after the session committed")


def _ended(session: Session, transaction: SessionTransaction) -> None:
    """``after_transaction_end``: what still waits for ``transaction`` will never see it
    commit (its commit passed it on or ran it already)."""
    pending = session.info.get(_PENDING)
    if pending is None:
        return
    pending.pop(transaction, None)
    if not pending:
        del session.info[_PENDING]


def _enclosing(transaction: SessionTransaction | None) -> SessionTransaction | None:
    """The savepoint or root around ``transaction`` (skipping the ORM's internal
    subtransactions, whose commit is not a commit), or None for a root."""
    parent = None if transaction is None else transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent


# -- which transactions are open here ------------------------------------------------------


def _owner() -> object:
    """The task (in an event loop) or else the thread that runs this."""
    loop = asyncio.events._get_running_loop()
    task = None if loop is None else asyncio.current_task(loop)
    return task if task is not None else threading.get_ident()


def _note(opened: SessionTransaction | Connection) -> None:
    """Note a root transaction begun here, forgetting those that have ended."""
    noted = _opened.get()
    if noted:
        noted = tuple(entry for entry in noted if _open(entry) is not None)
    _opened.set((*noted, (weakref.ref(opened), _owner())))


def _open(entry: _Opened) -> Session | Connection | None:
    """The session or connection of a noted transaction if it is still open, else None."""
    opened = entry[0]()
    if isinstance(opened, SessionTransaction):
        session = opened.session
        return session if session.get_transaction() is opened else None
    if isinstance(opened, Connection) and opened.in_transaction():
        return opened
    return None


def open_resources() -> Iterator[Session | Connection]:
    """Sessions and connections with a transaction that this thread or task began and
    that is still open (of any database: the outbox picks its own)."""
    owner = _owner()
    for entry in _opened.get():
        if entry[1] == owner:
            resource = _open(entry)
            if resource is not None:
                yield resource


def _session_began(session: Session, transaction: SessionTransaction) -> None:
    """``after_transaction_create``: note roots (a savepoint is inside one)."""
    del session
    if transaction.parent is None:
        _note(transaction)


def _connection_began(connection: Connection) -> None:
    """An engine's ``begin``: a Core transaction (sessions' connections too)."""
    _note(connection)


def watch_sessions() -> None:
    """Install the Session listeners, once per process."""
    with _install:
        for name, listener in (
            ("after_transaction_create", _session_began),
            ("after_commit", _committed),
            ("after_transaction_end", _ended),
        ):
            if not sa.event.contains(Session, name, listener):
                sa.event.listen(Session, name, listener)


def watch_engine(engine: Engine) -> None:
    """Note the transactions of ``engine``'s connections (once per engine)."""
    with _install:
        if not sa.event.contains(engine, "begin", _connection_began):
            sa.event.listen(engine, "begin", _connection_began)
