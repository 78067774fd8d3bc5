"""The claims of the SQL stores of contrib (SQLAlchemy and Django).

On SQLite they run ``eventbus.outbox.claims`` as it is, the statement of
``SQLiteOutbox``. On PostgreSQL the same three steps (the window, the heads scan, runs),
locking what they pick ``FOR UPDATE SKIP LOCKED`` so that relays claiming at once never
lease the same head. ``positional`` turns the named parameters into the ``%s`` of the
drivers, for the stores that run them on the driver's own cursor.
"""

# ruff: noqa: S608 - the statements are built from the store's own table names; values are bound

from __future__ import annotations

import re
from typing import Final

from eventbus.outbox.claims import WINDOW, due_sql

__all__ = ["CLAIMED", "positional", "postgresql_claim_sql", "postgresql_window_sql"]


def postgresql_claim_sql(
    outbox: str, inbox: str, now: str, *, per_key: int, materialize: bool
) -> str:
    """The claim on PostgreSQL, as ``claim_sql`` (same parameters, same columns, ``seen``
    included). Whatever it leases it has locked ``FOR UPDATE SKIP LOCKED`` first (heads,
    and rows without a key), checking again under the lock that each is still claimable;
    a run's later rows need no lock of their own: no other claim can take them while
    their head is there. ``materialize``: PostgreSQL >= 12, which may inline a CTE
    unless told (older ones never do)."""
    hold = "MATERIALIZED " if materialize else ""
    due = due_sql("{a}", now)
    past = "(h.d > c.d OR (h.d = c.d AND (c.k IS NULL OR (h.k IS NOT NULL AND h.k > c.k))))"
    first = f"""NOT EXISTS (SELECT 1 FROM {outbox} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id)"""
    columns = ", ".join(f"{outbox}.{name}" for name in CLAIMED)
    return f"""/* eventbus claim: heads */
WITH RECURSIVE
picked AS {hold}(
    SELECT o.id, o.destination, o.key
    FROM (SELECT w.id FROM {outbox} AS w WHERE {due.format(a="w")}
            ORDER BY w.id LIMIT :window) AS f
        JOIN {outbox} AS o ON o.id = f.id
    WHERE {due.format(a="o")} AND (o.key IS NULL OR {first})
    ORDER BY o.id LIMIT :batch
    FOR UPDATE OF o SKIP LOCKED),
need(n) AS (
    SELECT :batch - (SELECT count(*) FROM picked)
    WHERE (SELECT count(*) FROM picked) < :batch
      AND (SELECT count(*) FROM (SELECT 1 FROM {outbox} AS w WHERE {due.format(a="w")}
            ORDER BY w.id LIMIT :window) AS z) = :window),
c(d, k) AS (
    SELECT CAST(COALESCE(CAST(:cd AS TEXT), (SELECT min(destination) FROM {outbox})) AS TEXT),
        CAST(:ck AS TEXT)),
keys(step, lap, d, k, head, found) AS (
    SELECT 0, 0, c.d, c.k, CAST(NULL AS BIGINT), 0 FROM need, c WHERE need.n > 0
    UNION ALL
    SELECT h.step + 1,
        CASE WHEN a.id IS NULL AND NOT EXISTS (SELECT 1 FROM {outbox}
            WHERE destination > h.d) THEN h.lap + 1 ELSE h.lap END,
        CAST(CASE WHEN a.id IS NOT NULL THEN h.d ELSE COALESCE(
            (SELECT destination FROM {outbox} WHERE destination > h.d
                ORDER BY destination LIMIT 1),
            (SELECT min(destination) FROM {outbox})) END AS TEXT),
        CAST(a.key AS TEXT),
        CAST(CASE WHEN a.ok THEN a.id END AS BIGINT),
        h.found + CASE WHEN a.ok THEN 1 ELSE 0 END
    FROM keys AS h CROSS JOIN c LEFT JOIN LATERAL (
        SELECT x.id, x.key, {due.format(a="x")} AND x.id NOT IN (SELECT id FROM picked) AS ok
        FROM (
            (SELECT id FROM {outbox} WHERE h.k IS NULL AND destination = h.d
                AND key >= '' ORDER BY key, id LIMIT 1)
            UNION ALL
            (SELECT id FROM {outbox} WHERE destination = h.d AND key > h.k
                ORDER BY key, id LIMIT 1)) AS f
        JOIN {outbox} AS x ON x.id = f.id) AS a ON true
    WHERE h.lap < 2 AND h.found < (SELECT n FROM need) AND NOT (h.lap = 1 AND {past})),
visited AS (
    SELECT h.* FROM keys AS h, c WHERE h.lap < 2 AND NOT (h.lap = 1 AND {past})),
heads AS {hold}(
    SELECT o.id, o.destination, o.key FROM {outbox} AS o
    WHERE o.id IN (SELECT head FROM visited WHERE head IS NOT NULL)
      AND {due.format(a="o")} AND {first}
    FOR UPDATE SKIP LOCKED),
loose AS {hold}(
    SELECT o.id, o.destination, o.key FROM {outbox} AS o
    WHERE o.id IN (SELECT n.id FROM visited AS h CROSS JOIN LATERAL (
            SELECT x.id FROM {outbox} AS x WHERE x.destination = h.d AND x.key IS NULL
              AND {due.format(a="x")} AND x.id NOT IN (SELECT id FROM picked)
            ORDER BY x.id LIMIT :batch) AS n
        WHERE h.k IS NULL)
      AND {due.format(a="o")}
    FOR UPDATE SKIP LOCKED),
chosen AS (
    SELECT * FROM picked UNION ALL SELECT * FROM heads UNION ALL SELECT * FROM loose),
{_postgresql_runs(outbox, due, per_key)},
last(d, k) AS (SELECT d, k FROM keys ORDER BY step DESC LIMIT 1)
UPDATE {outbox} SET lease_owner = :owner, lease_until = {now} + :lease
WHERE {outbox}.id = ANY(ARRAY(SELECT DISTINCT id FROM runs ORDER BY id LIMIT :batch))
RETURNING {columns},
    EXISTS (SELECT 1 FROM {inbox} AS i
        WHERE i.handler = {outbox}.destination AND i.envelope_id = {outbox}.envelope_id
        OFFSET 0),
    (SELECT d FROM last), (SELECT k FROM last)
"""


def postgresql_window_sql(outbox: str, inbox: str, now: str, *, materialize: bool) -> str:
    """``window_sql`` on PostgreSQL: the picks locked ``FOR UPDATE SKIP LOCKED`` in a
    materialised CTE, the inbox probed by its primary key (OFFSET 0)."""
    hold = "MATERIALIZED " if materialize else ""
    columns = ", ".join(f"{outbox}.{name}" for name in CLAIMED)
    return f"""
WITH eventbus_claimable AS {hold}(
    SELECT o.id FROM {outbox} AS o
    WHERE o.id < (SELECT min(w.id) FROM {outbox} AS w) + {WINDOW} * :batch
      AND {due_sql("o", now)}
      AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM {outbox} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id))
    ORDER BY o.id LIMIT :batch
    FOR UPDATE SKIP LOCKED)
UPDATE {outbox} SET lease_owner = :owner, lease_until = {now} + :lease
FROM eventbus_claimable WHERE {outbox}.id = eventbus_claimable.id
RETURNING {columns},
    EXISTS (SELECT 1 FROM {inbox} AS i
        WHERE i.handler = {outbox}.destination AND i.envelope_id = {outbox}.envelope_id
        OFFSET 0)
"""


def _postgresql_runs(outbox: str, due: str, per_key: int) -> str:
    """``runs`` on PostgreSQL: each head's first ``per_key`` rows of its key, read by one
    descent of the key's index (LATERAL), kept while every row up to each is claimable."""
    if per_key == 1:
        return "runs AS (SELECT id FROM chosen)"
    return f"""runs AS (
    SELECT id FROM chosen WHERE key IS NULL
    UNION ALL
    SELECT r.id FROM chosen AS c CROSS JOIN LATERAL (
        SELECT y.id, bool_and(y.ok) OVER (ORDER BY y.id) AS open FROM (
            SELECT x.id, {due.format(a="x")} AS ok FROM {outbox} AS x
            WHERE x.destination = c.destination AND x.key = c.key AND x.id >= c.id
            ORDER BY x.id LIMIT :per_key) AS y) AS r
    WHERE c.key IS NOT NULL AND r.open)"""


CLAIMED: Final = (
    "id",
    "envelope_id",
    "name",
    "destination",
    "key",
    "payload",
    "attempts",
    "created_at",
    "first_failed_at",
)
"""The columns of a claimed row, in the order a claim returns them. A dialect whose
claim ``reports_seen`` returns one more after them: whether the destination's inbox
holds the envelope already."""

_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def positional(sql: str, placeholder: str = "%s") -> tuple[str, list[str]]:
    """``sql`` with each ``:name`` turned into ``placeholder``, and the names in order
    (Django's cursors take positional parameters only). For the claims' own text: it
    does not look inside quoted literals, which hold no ``:name`` there."""
    names: list[str] = []

    def take(found: re.Match[str]) -> str:
        names.append(found.group(1))
        return placeholder

    return _NAMED.sub(take, sql), names
