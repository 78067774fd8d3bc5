"""Processes that open the SQLAlchemy outbox at the same time, on a database without it.

Workers started together (``eventbus worker`` several times, a deployment scaled up) each
build their bus, and ``SQLAlchemyOutbox(engine)`` creates its tables if they do not
exist. Looking then creating, unserialised, made all but one of them fail (on PostgreSQL
with a UniqueViolation on ``pg_type_typname_nsp_index``), found by the shop's distributed
test; now they take turns (PostgreSQL) or forgive a creation someone else won.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)
def test_outboxes_opened_at_once_all_open(
    make_engine: Callable[..., sa.Engine], prefix: str
) -> None:
    sessions = 8
    engines = [make_engine() for _ in range(sessions)]
    for engine in engines:  # connected beforehand, so the constructors start together
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    start = threading.Barrier(sessions)
    errors: list[BaseException] = []

    def open_outbox(engine: sa.Engine) -> None:
        start.wait()
        try:
            SQLAlchemyOutbox(engine, prefix=prefix).close()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=open_outbox, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [], f"{len(errors)} of {sessions} failed, the first: {errors[:1]}"
    with engines[0].connect() as connection:
        inspector = sa.inspect(connection)
        assert inspector.has_table(f"{prefix}_outbox")
        assert inspector.has_table(f"{prefix}_inbox")
