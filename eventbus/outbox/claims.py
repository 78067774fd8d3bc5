"""The claim of an outbox on a SQL database: a window in id order, then each key's head.

Public for store authors: ``SQLiteOutbox`` claims with it, and so do the SQLAlchemy and
Django stores (their PostgreSQL statement, in ``eventbus_contrib``, has the same steps
with row locks); a store of your own over SQL can run the same statements and keep the
same promises. The SQLite text is shown; other databases need their own spelling.

A row is claimable while it is due, unleased, and no earlier row of its (destination,
key) is left in any state (pending, leased, delayed): its key's *head*. Rows without a
key are claimable on their own. Finding heads by reading pending rows in id order and
probing each for an earlier row of its key costs the whole backlog per claim once a few
keys hold most of it (a hot key): draining it is quadratic.

So one statement, in three steps:

1. **The window**: the due, unleased rows in id order, each probed for an earlier row of
   its key, up to ``batch`` heads or ``window`` rows read (about four batches), which
   ever comes first. Oldest first; enough whenever keys are many, or the backlog small.
   (``window`` 0 skips it: ``ClaimState`` does after a short window.)
2. **The heads scan**, only when the window was full and gave a short batch: a loose
   index scan over the (destination, key, id) index, one descent per key (a recursive
   CTE: next key after the last one, its first row), from where the previous scan
   stopped (``cd``, ``ck``) and round to it again, so keys late in that order are not
   starved; it stops once it has found enough. Each destination's rows without a key
   are taken there too, in id order, so a hot key cannot hold them back either.
3. **Runs** (``per_key`` > 1): from each head, up to ``per_key`` consecutive rows of its
   key, ending before the first that is not claimable (delayed or leased): a key's rows
   are never claimed past one that is left.

The batch is cut to ``batch`` rows in id order (a key's run stays a prefix of it) and
leased. The statement also returns where its heads scan stopped, for the next claim.
"""

# ruff: noqa: S608 - the statements are built from the store's own table names; values are bound

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigurationError

__all__ = ["WINDOW", "ClaimState", "check_per_key", "claim_sql", "due_sql", "window_sql"]

WINDOW = 4
"""Batches of rows in the id-order window. Measured on SQLite and PostgreSQL (8,000 rows):
with 1,000 keys the window fills a batch within its first batch of rows and the heads
scan never runs; with 50 keys it reads all its rows for 50 heads, and the heads scan
finds them in a few descents each (which is why a short window sends the next claim
to the heads scan first)."""


class ClaimState:
    """How a store claims, and what its claims remember between them: whether to begin
    with the heads scan, and where the last heads scan stopped (the next one starts
    after it).

    A claim reads the window first (``window`` statement: the claim of old, bounded to
    the first ``WINDOW`` batches of rows). When that gives a short batch, the heads scan
    fills it (``heads``: the full statement without its window), and the claims after it
    begin with the heads scan: reading the window again would find the same few heads.
    Once a heads-first claim fills its batch, keys are many again and the window comes
    back. Claims of runs (``per_key`` > 1) are the full statement with its window. The
    mode is only ever a hint: any claim keeps the claim invariant.
    """

    __slots__ = ("_scanned", "cursor", "heads_first")

    def __init__(self) -> None:
        self.cursor: tuple[Any, Any] = (None, None)
        self.heads_first = False
        self._scanned = False

    def claim(
        self,
        execute: Callable[[str, dict[str, Any]], Sequence[Any]],
        owner: str,
        batch: int,
        lease: float,
        per_key: int,
    ) -> list[Any]:
        """Claim through ``execute(statement, parameters)``, where ``statement`` is
        ``window``, ``heads`` or ``runs``; in one transaction, the rows they return."""
        check_per_key(per_key)
        if per_key > 1:
            rows = list(execute("runs", self.parameters(owner, batch, lease, per_key)))
            self._learn(rows)
            self.heads_first = len(rows) < batch if self.heads_first else self._scanned
            return rows
        rows = []
        if not self.heads_first:
            rows = list(execute("window", self.parameters(owner, batch, lease, 1)))
            if len(rows) == batch:
                return rows
            self.heads_first = True
        self._scanned = False
        heads = list(execute("heads", self.parameters(owner, batch - len(rows), lease, 1)))
        self._learn(heads)
        if rows:
            return rows + heads
        if len(heads) == batch:
            self.heads_first = False
        return heads

    def parameters(self, owner: str, batch: int, lease: float, per_key: int) -> dict[str, Any]:
        """The named parameters of the statements."""
        check_per_key(per_key)
        return {
            "owner": owner,
            "lease": float(lease),
            "batch": batch,
            "window": 0 if self.heads_first else WINDOW * batch,
            "per_key": per_key,
            "cd": self.cursor[0],
            "ck": self.cursor[1],
        }

    def _learn(self, rows: Sequence[Any]) -> None:
        """Where the heads scan of the statement that returned ``rows`` stopped (their
        last two columns: NULL when it did not run)."""
        self._scanned = bool(rows) and rows[0][-2] is not None
        if self._scanned:
            self.cursor = (rows[0][-2], rows[0][-1])


def check_per_key(per_key: int) -> None:
    """Refuse a ``per_key`` that is not a positive int."""
    if isinstance(per_key, bool) or not isinstance(per_key, int) or per_key < 1:
        raise ConfigurationError(f"per_key must be an int >= 1, got {per_key!r}")


def claim_sql(outbox: str, inbox: str | None, now: str, *, per_key: int) -> str:
    """The claim as ``UPDATE ... RETURNING``: the ``CLAIMED`` columns, then (with an
    ``inbox``) whether it holds the envelope for the row's destination, then the
    destination and key where the heads scan stopped (NULL when it did not run).

    Named parameters: ``owner``, ``lease``, ``batch``, ``window`` (rows in the id-order
    window), ``per_key`` (with ``per_key`` > 1 only), ``cd`` and ``ck`` (where the previous
    heads scan stopped, or NULL).
    """
    due = due_sql("{a}", now)
    # The unary + keeps SQLite from reading the window through the available_at index
    # and sorting every due row by id: the window walks the primary key and stops.
    walk = due_sql("+{a}", now)
    # A row of the heads scan's second lap that is at or past where the first began.
    past = "(h.d > c.d OR (h.d = c.d AND (c.k IS NULL OR (h.k IS NOT NULL AND h.k > c.k))))"
    return f"""/* eventbus claim: heads */
WITH RECURSIVE
picked(id, destination, key) AS MATERIALIZED (
    SELECT o.id, o.destination, o.key FROM (SELECT w.id, w.destination, w.key
            FROM {outbox} AS w WHERE {walk.format(a="w")} ORDER BY w.id LIMIT :window) AS o
    WHERE o.key IS NULL OR NOT EXISTS (SELECT 1 FROM {outbox} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id)
    LIMIT :batch),
need(n) AS (
    SELECT :batch - (SELECT count(*) FROM picked)
    WHERE (SELECT count(*) FROM picked) < :batch
      AND (SELECT count(*) FROM (SELECT 1 FROM {outbox} AS w WHERE {walk.format(a="w")}
            ORDER BY w.id LIMIT :window) AS z) = :window),
c(d, k) AS (
    SELECT COALESCE(:cd, (SELECT min(destination) FROM {outbox})), :ck),
keys(step, lap, d, k, head, found) AS (
    SELECT 0, 0, c.d, c.k, NULL, 0 FROM need, c WHERE need.n > 0
    UNION ALL
    SELECT h.step + 1,
        CASE WHEN a.id IS NULL AND NOT EXISTS (SELECT 1 FROM {outbox}
            WHERE destination > h.d) THEN h.lap + 1 ELSE h.lap END,
        CASE WHEN a.id IS NOT NULL THEN h.d ELSE COALESCE(
            (SELECT destination FROM {outbox} WHERE destination > h.d
                ORDER BY destination LIMIT 1),
            (SELECT min(destination) FROM {outbox})) END,
        a.key,
        CASE WHEN {due.format(a="a")} AND a.id NOT IN (SELECT id FROM picked) THEN a.id END,
        h.found + COALESCE({due.format(a="a")} AND a.id NOT IN (SELECT id FROM picked), 0)
    FROM keys AS h, c LEFT JOIN {outbox} AS a ON a.id = CASE WHEN h.k IS NULL
        THEN (SELECT id FROM {outbox} WHERE destination = h.d AND key >= ''
            ORDER BY key, id LIMIT 1)
        ELSE (SELECT id FROM {outbox} WHERE destination = h.d AND key > h.k
            ORDER BY key, id LIMIT 1) END
    WHERE h.lap < 2 AND h.found < (SELECT n FROM need) AND NOT (h.lap = 1 AND {past})),
visited AS (
    SELECT h.* FROM keys AS h, c WHERE h.lap < 2 AND NOT (h.lap = 1 AND {past})),
chosen(id, destination, key) AS (
    SELECT id, destination, key FROM picked
    UNION ALL
    SELECT head, d, k FROM visited WHERE head IS NOT NULL
    UNION ALL
    SELECT n.id, n.destination, NULL FROM visited AS h, {outbox} AS n
    WHERE h.k IS NULL AND n.id IN (SELECT x.id FROM {outbox} AS x
        WHERE x.destination = h.d AND x.key IS NULL AND {due.format(a="x")}
          AND x.id NOT IN (SELECT id FROM picked) ORDER BY x.id LIMIT :batch)),
{_runs(outbox, due, per_key)},
last(d, k) AS (SELECT d, k FROM keys ORDER BY step DESC LIMIT 1)
UPDATE {outbox} SET lease_owner = :owner, lease_until = {now} + :lease
WHERE id IN (SELECT DISTINCT id FROM runs ORDER BY id LIMIT :batch)
RETURNING id, envelope_id, name, destination, key, payload, attempts, created_at,
    first_failed_at{_seen(outbox, inbox)}, (SELECT d FROM last), (SELECT k FROM last)
"""


def window_sql(outbox: str, inbox: str | None, now: str) -> str:
    """The ``window`` statement, the claim of one row per key as it was before heads
    scans, bounded: the due, unleased rows whose key has no earlier row left, oldest
    first, among ids below the smallest plus ``WINDOW`` batches (at most that many rows,
    in any state: a bound found by one descent of the primary key), leased. Returns the
    ``CLAIMED`` columns (and, with an ``inbox``, whether it holds the envelope); named
    parameters ``owner``, ``lease`` and ``batch``. The unary + keeps SQLite walking the
    primary key, not the available_at index."""
    return f"""
UPDATE {outbox} SET lease_owner = :owner, lease_until = {now} + :lease
WHERE id IN (
    SELECT o.id FROM {outbox} AS o
    WHERE o.id < (SELECT min(w.id) FROM {outbox} AS w) + {WINDOW} * :batch
      AND {due_sql("+o", now)}
      AND (o.key IS NULL OR NOT EXISTS (SELECT 1 FROM {outbox} AS p
            WHERE p.destination = o.destination AND p.key = o.key AND p.id < o.id))
    ORDER BY o.id LIMIT :batch)
RETURNING id, envelope_id, name, destination, key, payload, attempts, created_at,
    first_failed_at{_seen(outbox, inbox)}
"""


def due_sql(alias: str, now: str) -> str:
    """Whether the row ``alias`` is due and unleased (a template when ``alias`` is ``{a}``)."""
    return (
        f"({alias}.available_at <= {now} "
        f"AND ({alias}.lease_until IS NULL OR {alias}.lease_until < {now}))"
    )


def _runs(outbox: str, due: str, per_key: int) -> str:
    """``runs``: the rows to lease, each chosen head with the rows of its key after it."""
    if per_key == 1:
        return "runs AS (SELECT id FROM chosen)"
    # Up to per_key rows of the key from its head, each with no row that is not
    # claimable between the head and it.
    return f"""runs AS (
    SELECT id FROM chosen WHERE key IS NULL
    UNION ALL
    SELECT r.id FROM chosen AS c, {outbox} AS r
    WHERE c.key IS NOT NULL
      AND r.id IN (SELECT x.id FROM {outbox} AS x WHERE x.destination = c.destination
            AND x.key = c.key AND x.id >= c.id ORDER BY x.id LIMIT :per_key)
      AND NOT EXISTS (SELECT 1 FROM {outbox} AS b WHERE b.destination = c.destination
            AND b.key = c.key AND b.id >= c.id AND b.id <= r.id
            AND NOT {due.format(a="b")}))"""


def _seen(outbox: str, inbox: str | None) -> str:
    """Whether the destination's inbox holds the row's envelope. The unary + on the
    updated row's columns is needed: without it SQLite (3.40) plans this subquery in
    RETURNING as a scan of the whole inbox per row."""
    if inbox is None:
        return ""
    return (
        f", EXISTS (SELECT 1 FROM {inbox} AS i WHERE i.handler = +{outbox}.destination "
        f"AND i.envelope_id = +{outbox}.envelope_id)"
    )
