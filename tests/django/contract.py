"""The Django stores in the contract suites: their harness, on a fresh database per test.

Each test gets a database of its own (``fresh_database``: a SQLite file, or a PostgreSQL
schema) with the app's migration applied, which no bus of the test project relays from.
The application's transactions are Django connections of their own (what a request's
thread holds), in a transaction Django manages (autocommit off).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.contract.conftest import Harness, Transaction
from tests.servers import fresh_name


class DjangoHarness(Harness):
    """``DjangoOutbox`` on a database of its own; the application uses Django connections."""

    model_examples = 8

    def __init__(self, backend: Any, make_database: Callable[..., str]) -> None:
        super().__init__(backend)
        self._make_database = make_database
        self.kind = backend.url.removeprefix("django:")
        self.alias = make_database(self.kind)
        self._orders = f"{fresh_name()}_orders"
        self._connections: list[Any] = []

    def _outbox(self, alias: str, **options: Any) -> Any:
        from eventbus_contrib.django import DjangoOutbox

        options.pop("create", None)  # the tables are the migration's: nothing to create
        return DjangoOutbox(alias, **options)

    def _open(self, **options: Any) -> Any:
        return self._outbox(self.alias, **options)

    def _open_elsewhere(self, *, schema_sql: bool) -> Any:
        alias = self._make_database(self.kind, migrated=False)
        if schema_sql:
            ddl = self.store.schema_sql()  # type: ignore[attr-defined]
            with self._connection(alias).cursor() as cursor:
                for statement in _statements(ddl):
                    cursor.execute(statement)
        return self._outbox(alias)

    def _open_earlier_release(self, *, create: bool) -> Any:
        del create
        pytest.skip(
            "Django's migrations bring the tables up to date (manage.py migrate); no earlier "
            "release of these tables exists"
        )

    def _connection(self, alias: str | None = None) -> Any:
        """A Django connection of the application's, of its own (a request's thread's)."""
        from django.db import connections

        connection = connections.create_connection(alias or self.alias)
        self._connections.append(connection)
        return connection

    def begin(self) -> Transaction:
        self.store  # noqa: B018 - the store's tables are there first
        connection = self._connection()
        connection.set_autocommit(False)

        def commit() -> None:
            connection.commit()
            connection.set_autocommit(True)

        def rollback() -> None:
            connection.rollback()
            connection.set_autocommit(True)

        return Transaction(connection, commit=commit, rollback=rollback)

    def _query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        connection = self._connection()
        with connection.cursor() as cursor:
            cursor.execute(sql, params or None)
            rows = cursor.fetchall() if cursor.description else []
        connection.close()
        return [tuple(row) for row in rows]

    def create_orders(self) -> None:
        self._query(f"CREATE TABLE {self._orders} (id INTEGER PRIMARY KEY)")

    def insert_order(self, resource: Any, order_id: int) -> None:
        with resource.cursor() as cursor:
            cursor.execute(f"INSERT INTO {self._orders} (id) VALUES (%s)", [order_id])

    def orders(self) -> list[int]:
        return [n for (n,) in self._query(f"SELECT id FROM {self._orders} ORDER BY id")]

    def outbox_rows(self, *columns: str) -> list[tuple[Any, ...]]:
        rows = self._query(f"SELECT {', '.join(columns)} FROM eventbus_outbox ORDER BY id")
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]

    def close(self) -> None:
        super().close()
        for connection in self._connections:
            connection.close()


def _statements(ddl: str) -> list[str]:
    """The statements of ``sqlmigrate``'s output, without its comments and BEGIN/COMMIT."""
    lines = [line for line in ddl.splitlines() if line and not line.startswith("--")]
    statements = [part.strip() for part in " ".join(lines).split(";")]
    return [s for s in statements if s and s.upper() not in ("BEGIN", "COMMIT")]
