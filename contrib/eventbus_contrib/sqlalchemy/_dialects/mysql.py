"""MariaDB (>= 10.6) and MySQL (>= 8.0): a claim in two statements, binary collation.

Neither has ``UPDATE ... RETURNING``: one short transaction runs ``SELECT ... FOR UPDATE
SKIP LOCKED``, then ``UPDATE ... WHERE id IN``. The relay's transactions run at READ
COMMITTED, so a claim never takes gap locks that would stall the application's INSERTs.
The clock is ``UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6``: both read the statement's
start time, and unlike ``UNIX_TIMESTAMP(NOW(6))`` it does not go through the session time
zone, which is ambiguous for an hour each year under daylight saving time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from .base import OutboxDialect

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Dialect

__all__ = ["MySQLDialect"]


class MySQLDialect(OutboxDialect):
    """MariaDB and MySQL, through any of SQLAlchemy's drivers for them."""

    now_sql = "(UNIX_TIMESTAMP() + MICROSECOND(NOW(6)) / 1e6)"
    floor = ((8, 0), "MySQL 8.0 (FOR UPDATE SKIP LOCKED)")
    mariadb_floor: ClassVar[tuple[tuple[int, int], str]] = (
        (10, 6),
        "MariaDB 10.6 (FOR UPDATE SKIP LOCKED)",
    )

    table_options: ClassVar[Mapping[str, Any]] = {
        f"{dialect}_{option}": value
        for dialect in ("mysql", "mariadb")
        for option, value in (
            ("engine", "InnoDB"),
            ("charset", "utf8mb4"),
            ("collate", "utf8mb4_bin"),
        )
    }
    """The tables' options: ``utf8mb4`` with the binary collation ``utf8mb4_bin``, so
    handler names and keys compare case-sensitively (the server default
    ``utf8mb4_general_ci`` would make handlers ``a.B`` and ``a.b`` share an inbox). Like
    every ``PAD SPACE`` collation it ignores trailing spaces."""

    key_index_length: ClassVar[int] = 255
    """Characters of ``key`` in the (destination, key, id) index: 1024 characters of
    utf8mb4 are 4096 bytes, over InnoDB's 3072-byte limit for an index entry. The column
    keeps all 1024; the index narrows by the first 255 and the row decides."""

    def version_floor(self, dialect: Dialect) -> tuple[tuple[int, int], str]:
        return self.mariadb_floor if getattr(dialect, "is_mariadb", False) else self.floor

    def claim(
        self, connection: Connection, *, owner: str, batch: int, lease: float
    ) -> Sequence[Any]:
        """Lock the rows, then lease them, in the same short transaction."""
        found = connection.execute(self.claimable(batch, only_id=False)).all()
        if found:
            table = self.outbox
            connection.execute(
                sa.update(table)
                .where(table.c.id.in_([row.id for row in found]))
                .values(lease_owner=owner, lease_until=self.now + float(lease))
            )
        return found

    def _insert_new(self, values: dict[str, Any] | list[dict[str, Any]]) -> sa.Insert:
        # IGNORE also turns other errors into warnings, but the values are bounded by
        # the core (handler names <= 200 characters, UUIDs).
        return sa.insert(self.inbox).values(values).prefix_with("IGNORE")
