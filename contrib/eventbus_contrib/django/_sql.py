"""Every statement the Django stores send, per database vendor, in one place.

The outbox's claim is today's claim of the other stores, written out: rows picked by
their state (never by the highest id seen), oldest first, leased with the database's
clock, and never a row while an earlier row of its (destination, key) is left in any
state. PostgreSQL picks them ``FOR UPDATE SKIP LOCKED`` in a materialised CTE (as
``eventbus_contrib.sqlalchemy`` does), SQLite in one ``UPDATE ... RETURNING`` (as
``eventbus.outbox.SQLiteOutbox`` does: SQLite has one writer at a time). On PostgreSQL an
outbox INSERT may carry a ``pg_notify``, which wakes relays in other processes (LISTEN, in
``_listen.py``). Parameters are
``%s`` placeholders, as Django's cursors take them on every backend; table names are
constants.
"""

from __future__ import annotations

from typing import Final

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

    def claim(self) -> str:
        """Lease up to ``batch`` rows; parameters in ``claim_parameters`` order."""
        raise NotImplementedError

    def claim_parameters(self, owner: str, lease: float, batch: int) -> list[object]:
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

    def claim(self) -> str:
        # The unary + on the updated row's columns keeps SQLite (3.40) from planning the
        # subquery in RETURNING as a scan of the whole inbox per row.
        now = self.now
        return f"""
UPDATE {OUTBOX}
SET lease_owner = %s, lease_until = {now} + %s
WHERE id IN (
    SELECT o.id FROM {OUTBOX} AS o
    WHERE o.available_at <= {now}
      AND (o.lease_until IS NULL OR o.lease_until < {now})
      AND (o.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM {OUTBOX} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id))
    ORDER BY o.id
    LIMIT %s
)
RETURNING {CLAIMED}, EXISTS (SELECT 1 FROM {INBOX} AS i
            WHERE i.handler = +{OUTBOX}.destination
              AND i.envelope_id = +{OUTBOX}.envelope_id)
"""  # noqa: S608

    def claim_parameters(self, owner: str, lease: float, batch: int) -> list[object]:
        return [owner, lease, batch]


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

    def claim(self) -> str:
        # The SELECT is a materialised CTE, run exactly once (Django needs PostgreSQL 12
        # or later, where MATERIALIZED exists); OFFSET 0 keeps the inbox probe one
        # lookup of its key per row instead of a hashed scan of the whole inbox.
        now = self.now
        return f"""
WITH eventbus_claimable AS MATERIALIZED (
    SELECT o.id FROM {OUTBOX} AS o
    WHERE o.available_at <= {now}
      AND (o.lease_until IS NULL OR o.lease_until < {now})
      AND (o.key IS NULL OR NOT EXISTS (
            SELECT 1 FROM {OUTBOX} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id))
    ORDER BY o.id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
)
UPDATE {OUTBOX} SET lease_owner = %s, lease_until = {now} + %s
FROM eventbus_claimable WHERE {OUTBOX}.id = eventbus_claimable.id
RETURNING {", ".join(f"{OUTBOX}.{column}" for column in CLAIMED.split(", "))},
    EXISTS (SELECT 1 FROM {INBOX} AS i
            WHERE i.handler = {OUTBOX}.destination AND i.envelope_id = {OUTBOX}.envelope_id
            OFFSET 0)
"""  # noqa: S608

    def claim_parameters(self, owner: str, lease: float, batch: int) -> list[object]:
        return [batch, owner, lease]


VENDORS: Final[dict[str, Statements]] = {
    "sqlite": SQLiteStatements(),
    "postgresql": PostgreSQLStatements(),
}


def statements_for(vendor: str) -> Statements | None:
    """The statements of a Django database vendor, or None where the stores do not run."""
    return VENDORS.get(vendor)
