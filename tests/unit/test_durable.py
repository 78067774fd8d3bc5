"""Durable delivery on the bus, apart from any one store: what a connection-taking handler
may take comes from the bus's own outbox; lock contention is recognised through wrapping
errors; a relay whose store cannot listen for commits polls; a store that cannot write in
an async transaction is refused at its entry.

What the bus promises over every outbox store (transactions, savepoints, the inbox,
retries, the relay's batches) is tested once per store in
tests/contract/test_bus_over_outbox.py.
"""

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from eventbus import ConfigurationError, EventBus, EventRegistry, event
from eventbus.outbox import SQLiteOutbox

REGISTRY = EventRegistry()


@event("durable.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int
    note: str = ""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


def rows_in(path: Path) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT destination FROM eventbus_outbox").fetchall()
    finally:
        connection.close()


class _Unit:
    """A connection type no part of eventbus knows: only the outbox below declares it."""


class _UnitOutbox(SQLiteOutbox):
    resource_type = _Unit


def test_a_handler_takes_what_its_outbox_declares_with_nothing_registered(tmp_path):
    """What a connection-taking handler may take comes from the bus's own outbox
    (``resource_type``), not from a list every integration adds to at import."""
    from eventbus.errors import HandlerSignatureError as SignatureError

    store = _UnitOutbox(tmp_path / "app.db")
    bus = EventBus(registry=REGISTRY, outbox=store, relay=False)
    try:

        @bus.subscribe(name="apply", delivery="durable")
        def apply(event: OrderPlaced, unit: _Unit) -> None: ...

        (handler,) = bus.handlers
        assert handler.connection_type is _Unit
        with pytest.raises(SignatureError, match="only a durable handler may"):

            @bus.subscribe(name="inline")
            def inline(event: OrderPlaced, unit: _Unit) -> None: ...

        assert [h.name for h in bus.handlers] == ["apply"]
    finally:
        bus.close()
        store.close()


def test_lock_contention_is_recognised_through_wrapping_errors():
    import sqlite3 as sqlite

    from eventbus.outbox._local import contention as _contention

    wrapper = RuntimeError("wrapped")
    wrapper.__cause__ = sqlite.OperationalError("database is locked")
    assert _contention(wrapper, object())
    assert not _contention(ValueError("no"), object())

    class Judge:
        def is_contention(self, error: BaseException) -> bool:
            return isinstance(error, TimeoutError)

    assert _contention(TimeoutError(), Judge())


class _DeafOutbox(SQLiteOutbox):
    """A store whose commit notifications cannot start (no connection, or an exiting
    Python 3.12 that refuses the listener's thread)."""

    def listen(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        raise RuntimeError("can't create new thread at interpreter shutdown")


def test_a_listener_that_cannot_start_leaves_the_relay_polling(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = _DeafOutbox(path, poll_interval=0.05)
    bus = EventBus(registry=REGISTRY, outbox=outbox)
    got: list[int] = []
    bus.subscribe(OrderPlaced, name="keep", delivery="durable")(lambda e: got.append(e.number))
    try:
        bus.publish(OrderPlaced(number=1))
        bus.drain(timeout=10)
        assert got == [1]
        assert rows_in(path) == []
        assert "cannot listen for commits" in caplog.text
    finally:
        bus.close()
        outbox.close()


def test_a_store_without_awrite_is_refused_at_entry() -> None:
    class HalfStore:
        def async_transaction_control(self, resource: object) -> object:
            return object()

    bus = EventBus(registry=REGISTRY, outbox=cast("Any", HalfStore()))  # a store half done

    async def body() -> None:
        with pytest.raises(ConfigurationError, match="no awrite"):
            async with bus.atransaction(object()):
                pass

    try:
        asyncio.run(body())
    finally:
        bus.close()
