"""``SQLAlchemyOutbox`` on PostgreSQL runs the relay's claims and completions on psycopg
itself (the same statements, rendered once), leaving the application's pool as it found
it; an engine with cursor listeners (instrumentation) keeps SQLAlchemy's execution path,
so the listeners still see the relay's statements.
"""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

from eventbus.errors import OutboxError
from eventbus.outbox import PendingRow

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def pending(key: str | None = None) -> PendingRow:
    return PendingRow(
        envelope_id=uuid.uuid4(), name="n", destination="h", key=key, payload=b"\x00{}"
    )


def test_the_claim_and_the_completion_leave_the_pools_isolation_level(
    make_engine: Callable[..., sa.Engine], prefix: str
) -> None:
    # The relay's transactions are READ COMMITTED whatever the application's engine says;
    # the connection goes back to the pool with the engine's own level.
    engine = make_engine(isolation_level="SERIALIZABLE", pool_size=1, max_overflow=0)
    store = SQLAlchemyOutbox(engine, prefix=prefix)
    written = [pending(key="k1"), pending(key="k2")]
    store.write_now(written)
    claimed = store.claim(owner="me", batch=10, lease=30.0)
    assert [row.envelope_id for row in claimed] == [row.envelope_id for row in written]
    assert [row.payload for row in claimed] == [b"\x00{}", b"\x00{}"]
    assert all(row.seen is False for row in claimed)
    assert store.complete([row.id for row in claimed], owner="me", processed=[("h", uuid.uuid4())])
    with engine.connect() as connection:
        level = connection.exec_driver_sql("SHOW transaction_isolation").scalar()
    assert level == "serializable"
    assert store.status().pending == 0
    store.close()


def test_cursor_listeners_still_see_the_relays_statements(engine: sa.Engine, prefix: str) -> None:
    store = SQLAlchemyOutbox(engine, prefix=prefix)
    store.write_now([pending()])
    seen: list[str] = []

    def keep(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", keep)
    try:
        [row] = store.claim(owner="me", batch=10, lease=30.0)
        assert store.complete([row.id], owner="me") == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", keep)
    assert any(f"UPDATE {prefix}_outbox" in statement for statement in seen), seen
    assert any(f"DELETE FROM {prefix}_outbox" in statement for statement in seen), seen
    store.close()


def test_a_lost_connection_is_an_outbox_error_and_the_next_claim_reconnects(
    make_engine: Callable[..., sa.Engine], prefix: str
) -> None:
    engine = make_engine(pool_size=1, max_overflow=0)
    store = SQLAlchemyOutbox(engine, prefix=prefix)
    store.write_now([pending()])
    with engine.connect() as connection:  # the pool's one connection: its server process
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    killer = make_engine()
    with killer.connect() as connection:
        connection.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(OutboxError, match="cannot claim outbox rows"):
        store.claim(owner="me", batch=10, lease=30.0)
    [row] = store.claim(owner="me", batch=10, lease=30.0)  # a new connection, not the dead one
    assert store.complete([row.id], owner="me") == 1
    store.close()
