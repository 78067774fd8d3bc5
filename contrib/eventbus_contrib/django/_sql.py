"""Every statement the Django stores send, per database vendor, in one place.

The outbox's claim is the claim of the other stores (``eventbus_contrib._claims``): rows
picked by their state (never by the highest id seen), a window of the oldest first, then
each key's head found directly, leased with the database's clock, and never a row while
an earlier row of its (destination, key) is left in any state. PostgreSQL locks what it
picks ``FOR UPDATE SKIP LOCKED`` (as ``eventbus_contrib.sqlalchemy`` does), SQLite needs
no lock (as ``eventbus.outbox.SQLiteOutbox``: SQLite has one writer at a time). On
PostgreSQL an outbox INSERT may carry a ``pg_notify``, which wakes relays in other
processes (LISTEN, in ``_listen.py``). Parameters are
``%s`` placeholders, as Django's cursors take them on every backend; table names are
constants.
"""

from __future__ import annotations

import functools
from typing import Final

from eventbus.outbox.claims import claim_sql, window_sql
from eventbus_contrib._claims import positional, postgresql_claim_sql, postgresql_window_sql

__all__ = ["CHANNEL", "VENDORS", "Statements", "statements_for"]

OUTBOX: Final = "eventbus_outbox"
INBOX: Final = "eventbus_inbox"
DEAD_LETTERS: Final = "eventbus_dead_letters"
CHANNEL: Final = "eventbus_outbox"
"""The PostgreSQL notification channel of outbox writes (``SQLAlchemyOutbox``'s too, with
its default prefix: both wake the relays of either)."""

CLAIMED: Final = (
    "id, envelope_id, name, destination, key, payload, attempts, created_at, first_failed_at"
)
"""The columns of a claimed row, in the order the store unpacks them; then ``seen``."""


class Statements:
    """The SQL of one vendor. ``now`` is unix seconds from the database's clock."""

    vendor: str
    channel: str | None = None
    """Where writes notify listening relays (PostgreSQL ``NOTIFY``); None: no such thing."""
    now: str
    begin: str
    """How the stores' own short transactions begin (SQLite: take the write lock at once,
    never a deferred transaction that reads, then fails to write with SQLITE_BUSY)."""
    max_parameters: int
    claim_prelude: tuple[str, ...] = ()
    """Run first in the claim's transaction."""

    def claim(self, statement: str) -> tuple[str, list[str]]:
        """The claim's ``window``, ``heads`` or ``runs`` statement
        (``eventbus_contrib._claims``) with ``%s`` placeholders, and the names of its
        parameters in their order."""
        raise NotImplementedError

    def insert(self, count: int, *, notify: bool = False) -> str:  # noqa: ARG002 - no notifications here
        """``count`` outbox rows in one statement, five parameters each; with ``notify``
        (where the vendor has notifications) the same round trip wakes listening relays."""
        now = self.now
        values = ", ".join(f"(%s, %s, %s, %s, %s, {now}, {now}, 0)" for _ in range(count))
        return (
            f"INSERT INTO {OUTBOX} (envelope_id, name, destination, key, payload, "  # noqa: S608
            f"created_at, available_at, attempts) VALUES {values}"
        )

    def mark(self) -> str:
        """One inbox mark, skipped when it is there already (its rowcount says which)."""
        return (
            f"INSERT INTO {INBOX} (handler, envelope_id, processed_at) "  # noqa: S608
            f"VALUES (%s, %s, {self.now}) ON CONFLICT DO NOTHING"
        )

    def delete_completed(self, count: int) -> str:
        marks = ", ".join(["%s"] * count)
        return f"DELETE FROM {OUTBOX} WHERE lease_owner = %s AND id IN ({marks})"  # noqa: S608

    def reschedule(self) -> str:
        now = self.now
        return (
            f"UPDATE {OUTBOX} SET attempts = %s, available_at = {now} + %s, "  # noqa: S608
            "lease_owner = NULL, lease_until = NULL, last_error = %s, "
            f"first_failed_at = COALESCE(first_failed_at, {now}) "
            "WHERE id = %s AND lease_owner = %s"
        )

    def renew(self, count: int) -> str:
        marks = ", ".join(["%s"] * count)
        return (
            f"UPDATE {OUTBOX} SET lease_until = {self.now} + %s "  # noqa: S608
            f"WHERE lease_owner = %s AND id IN ({marks})"
        )

    def status(self) -> str:
        now = self.now
        return (
            "SELECT COUNT(*), "  # noqa: S608
            f"SUM(CASE WHEN lease_until >= {now} THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN available_at > {now} THEN 1 ELSE 0 END), "
            f"{now} - MIN(created_at) FROM {OUTBOX}"
        )

    by_name = f"SELECT name, COUNT(*) FROM {OUTBOX} GROUP BY name ORDER BY name"  # noqa: S608

    seen = f"SELECT 1 FROM {INBOX} WHERE handler = %s AND envelope_id = %s"  # noqa: S608

    def seen_many(self, count: int) -> str:
        pairs = ", ".join(["(%s, %s)"] * count)
        return (
            f"SELECT handler, envelope_id FROM {INBOX} "  # noqa: S608
            f"WHERE (handler, envelope_id) IN (VALUES {pairs})"
        )


class SQLiteStatements(Statements):
    vendor = "sqlite"
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    begin = "BEGIN IMMEDIATE"
    max_parameters = 999  # SQLite before 3.32

    def claim(self, statement: str) -> tuple[str, list[str]]:
        return _sqlite_claim(self.now, statement)


class PostgreSQLStatements(Statements):
    vendor = "postgresql"
    now = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    begin = "BEGIN"
    max_parameters = 32767
    channel = CHANNEL

    def insert(self, count: int, *, notify: bool = False) -> str:
        # The INSERT in a data-modifying CTE (which always runs), then pg_notify: one round
        # trip. PostgreSQL sends the notification at COMMIT only, and never for a
        # transaction that rolls back; several in one transaction arrive as one.
        plain = super().insert(count)
        if not notify:
            return plain
        return f"WITH written AS ({plain} RETURNING 1) SELECT pg_notify('{CHANNEL}', '')"

    # Once its statistics say most rows pass the filter, the planner prefers scanning the
    # whole table and sorting to walking the primary key (measured for the SQLAlchemy
    # store: 14.9 ms a claim against 2.8 ms). SET LOCAL ends with the claim's transaction.
    claim_prelude = ("SET LOCAL enable_seqscan = off",)

    def claim(self, statement: str) -> tuple[str, list[str]]:
        return _postgresql_claim(self.now, statement)


@functools.cache
def _sqlite_claim(now: str, statement: str) -> tuple[str, list[str]]:
    if statement == "window":
        return positional(window_sql(OUTBOX, INBOX, now))
    per_key = 2 if statement == "runs" else 1
    return positional(claim_sql(OUTBOX, INBOX, now, per_key=per_key))


@functools.cache
def _postgresql_claim(now: str, statement: str) -> tuple[str, list[str]]:
    # Django needs PostgreSQL 12 or later, where MATERIALIZED exists.
    if statement == "window":
        return positional(postgresql_window_sql(OUTBOX, INBOX, now, materialize=True))
    per_key = 2 if statement == "runs" else 1
    return positional(postgresql_claim_sql(OUTBOX, INBOX, now, per_key=per_key, materialize=True))


VENDORS: Final[dict[str, Statements]] = {
    "sqlite": SQLiteStatements(),
    "postgresql": PostgreSQLStatements(),
}


def statements_for(vendor: str) -> Statements | None:
    """The statements of a Django database vendor, or None where the stores do not run."""
    return VENDORS.get(vendor)
