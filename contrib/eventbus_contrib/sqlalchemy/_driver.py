"""The relay's claims and completions on psycopg itself, with SQL rendered once.

Through SQLAlchemy a relay statement costs its execution path (events, the result's row
processing, the pool's bookkeeping) on every batch and every row. Measured on PostgreSQL,
running the same statements on the psycopg connection underneath took the in-process relay
from 0.50x to 0.74-0.83x of a hand-written loop. The dialects keep building their
statements as they always did (SQLAlchemy objects, or SQL text): a ``DriverConnection``
answers the two calls they make of a ``Connection`` (``execute`` and
``exec_driver_sql``), renders each statement object once, and runs it on psycopg, which
prepares a statement it sees again (its ``prepare_threshold``).

It is used only where nothing would miss SQLAlchemy's execution path: on psycopg (3),
and while no ``before_cursor_execute``/``after_cursor_execute`` listener is connected to
the engine (an application's instrumentation then sees the relay's statements as before).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

__all__ = ["DriverConnection", "driver_transaction", "drives"]


def drives(engine: Engine) -> bool:
    """Whether the relay's statements on ``engine`` may run on the driver itself now."""
    if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
        return False
    dispatch = engine.dispatch
    return not (dispatch.before_cursor_execute or dispatch.after_cursor_execute)


class _Result:
    """What the dialects read of a result: its rows, or how many rows it changed."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[tuple[Any, ...]]:
        return self._rows

    def first(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None


class DriverConnection:
    """A psycopg connection inside a transaction, answering like a SQLAlchemy
    ``Connection`` for the statements a dialect runs in the relay's transactions."""

    __slots__ = ("_compiled", "_dialect", "_driver")

    def __init__(
        self, driver: Any, dialect: sa.Dialect, compiled: dict[Any, tuple[str, dict[str, Any]]]
    ) -> None:
        self._driver = driver
        self._dialect = dialect
        self._compiled = compiled

    def exec_driver_sql(self, statement: str, parameters: Any = None) -> _Result:
        return self._run(statement, parameters)

    def execute(self, statement: Any, parameters: Mapping[str, Any] | None = None) -> _Result:
        if isinstance(statement, str):
            return self._run(statement, parameters)
        rendered = self._compiled.get(statement)
        if rendered is None:
            rendered = self._compiled[statement] = self._render(statement)
        sql, defaults = rendered
        return self._run(sql, {**defaults, **parameters} if parameters else defaults)

    def _render(self, statement: sa.Executable) -> tuple[str, dict[str, Any]]:
        """The statement's SQL in psycopg's parameter style, and the values SQLAlchemy
        bound in it (a LIMIT, a literal): rendered once, kept by the store."""
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=self._dialect, compile_kwargs={"render_postcompile": True}
        )
        return str(compiled), {
            name: value for name, value in compiled.params.items() if value is not None
        }

    def _run(self, sql: str, parameters: Any) -> _Result:
        cursor = self._driver.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description is not None else []
        return _Result(rows, cursor.rowcount)


@contextmanager
def driver_transaction(
    engine: Engine, compiled: dict[Any, tuple[str, dict[str, Any]]]
) -> Iterator[DriverConnection]:
    """A short READ COMMITTED transaction on a pooled connection's psycopg connection,
    committed on a clean exit. Driver errors come out as SQLAlchemy's (``DBAPIError``),
    so whoever judged them before (the store's messages, contention) still can."""
    from psycopg import IsolationLevel  # noqa: PLC0415 - only where psycopg drives

    dbapi_error = engine.dialect.loaded_dbapi.Error
    raw = engine.raw_connection()
    try:
        driver: Any = raw.driver_connection
        previous = driver.isolation_level
        # What the relay's engine option says (no round trip: psycopg sends it with
        # BEGIN), put back before the connection returns to the pool.
        driver.isolation_level = IsolationLevel.READ_COMMITTED
        try:
            yield DriverConnection(driver, engine.dialect, compiled)
            driver.commit()
        except BaseException:
            if not driver.broken and not driver.closed:
                driver.rollback()
            raise
        finally:
            if not driver.broken and not driver.closed:
                driver.isolation_level = previous
    except dbapi_error as error:
        if driver.broken or driver.closed:
            raw.invalidate()  # not back to the pool: it is gone
        raise sa_exc.DBAPIError.instance(
            None, None, error, dbapi_error, connection_invalidated=bool(driver.broken)
        ) from error
    finally:
        raw.close()
