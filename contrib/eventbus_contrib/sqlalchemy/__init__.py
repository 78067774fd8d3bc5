"""The transactional outbox on SQLAlchemy 2: PostgreSQL, MariaDB (and MySQL 8) and SQLite.

How to use it is in the README ("Transactions and the outbox"). For maintainers, the
rooms of this package:

- ``_dead_letters``: ``SQLAlchemyDeadLetterStore``, dead letters a fleet shares, and
  ``dead_letter_table``.
- ``_engine``: what both stores know of the engine: the database's clock, SQLite's
  set-up, table options, driver errors told without the password.
- ``_store``: ``SQLAlchemyOutbox``, the store's promises in the terms every database
  shares: writes in the caller's transaction, the relay's short transactions of its own
  fenced by its lease owner, errors as ``OutboxError`` without the password.
- ``_dialects``: one strategy object per database (``postgresql``, ``mysql`` for MariaDB
  too, ``sqlite``), chosen once from the engine: the claim, the completion with its inbox
  marks, the inbox mark INSERT, the database clock, notifications, schema specifics, the
  version floor, which sessions it can join. ``base`` says what the store asks of one.
- ``_schema``: ``outbox_tables``, the DDL, and the columns added since the first release.
- ``_resources``: the application's sessions and connections, checked and joined.
- ``_controls``: how ``bus.transaction()`` and ``bus.atransaction()`` drive them.
- ``_tracking``: a joined session's commit heard, and which transactions are open here.
- ``_core``: every name taken from ``eventbus``, in one place.

What every dialect keeps: claiming never relies on ids being committed in order (they
are not on PostgreSQL and MariaDB: a sequence value is taken at INSERT, not at COMMIT).
It picks rows by state, ``FOR UPDATE SKIP LOCKED`` where the database locks rows, oldest
first; a transaction that commits late makes its rows claimable at its commit, whatever
the relay claimed meanwhile. Per (destination, key), a row is claimable only while no
earlier row of that key is left (in any state), which keeps outbox order across retries
and several relays. Leases and retry times come from the database's clock, never from
this process's.
"""

from __future__ import annotations

from ._core import MissingDependencyError

try:
    import sqlalchemy  # noqa: F401 - the extra's check, before any module needs it
except ImportError as error:  # pragma: no cover - the extra is installed in development
    raise MissingDependencyError(
        'eventbus_contrib.sqlalchemy needs SQLAlchemy 2: pip install "eventbus[sqlalchemy]"'
    ) from error

from ._dead_letters import SQLAlchemyDeadLetterStore, dead_letter_table
from ._schema import outbox_tables
from ._store import SQLAlchemyOutbox

__all__ = ["SQLAlchemyDeadLetterStore", "SQLAlchemyOutbox", "dead_letter_table", "outbox_tables"]
