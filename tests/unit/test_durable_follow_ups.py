"""A connection-taking durable handler that publishes: the follow-up joins its transaction.

Its outbox rows are written with the handler's effects and its inbox mark, so the
follow-up is published exactly when the effects commit: never lost when they commit,
never sent when they roll back. (Before, such a publish opened a second write
transaction on SQLite and waited for the handler's own lock until it timed out.)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import tenacity

from eventbus import EventBus, EventRegistry, RetryPolicy, SQLiteOutbox, event

REGISTRY = EventRegistry()


@event("followups.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


@event("followups.payment_taken", registry=REGISTRY)
class PaymentTaken:
    order_id: str


class DeclinedError(Exception):
    pass


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[EventBus]:
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05, timeout=2.0)
    bus = EventBus(
        registry=REGISTRY,
        outbox=outbox,
        retry=RetryPolicy(stop=tenacity.stop_after_attempt(1), wait=tenacity.wait_none()),
    )
    with closing(sqlite3.connect(tmp_path / "app.db")) as connection, connection:
        connection.execute("CREATE TABLE charges (order_id TEXT PRIMARY KEY)")
    yield bus
    bus.close()
    outbox.close()


def test_a_follow_up_is_published_with_the_handlers_effects(bus: EventBus, tmp_path: Path) -> None:
    receipts: list[str] = []

    @bus.subscribe(delivery="durable", name="payments.take")
    def take(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO charges VALUES (?)", (event.order_id,))
        if event.order_id == "declined":
            bus.publish(PaymentTaken(order_id="never-sent"))
            raise DeclinedError
        bus.publish(PaymentTaken(order_id=event.order_id))

    @bus.subscribe(delivery="durable", name="mail.receipt")
    def receipt(event: PaymentTaken) -> None:
        receipts.append(event.order_id)

    with closing(sqlite3.connect(tmp_path / "app.db", isolation_level=None)) as connection:
        for order_id in ("o-1", "declined", "o-2"):
            with bus.transaction(connection):
                bus.publish(OrderPlaced(order_id=order_id))
        bus.drain(timeout=20)
        assert sorted(receipts) == ["o-1", "o-2"]
        charged = connection.execute("SELECT order_id FROM charges ORDER BY order_id").fetchall()
    assert charged == [("o-1",), ("o-2",)]  # the declined charge rolled back with its publish
    assert [letter.handler for letter in bus.dead_letters.list()] == ["payments.take"]
