"""One application for the four-URL scenario: only EVENTBUS_TRANSPORT_URL changes.

Each process has its own database (``SCENARIO_DATABASE``): the publisher's holds its
outbox, the worker's its inbox and the ledger that the handlers write. ``python -m
tests.transports.scenario_app publish N`` publishes N orders, one transaction each, and
waits until its relay forwarded them; ``eventbus worker --app
tests.transports.scenario_app:bus`` runs the handlers.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from contextlib import closing

from eventbus import EventBus, EventRegistry, SQLiteOutbox, event

REGISTRY = EventRegistry()
DATABASE = os.environ.get("SCENARIO_DATABASE", "scenario.sqlite3")


@event("scenario.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str
    amount: int


@event("scenario.payment_taken", registry=REGISTRY)
class PaymentTaken:
    order_id: str
    amount: int


outbox = SQLiteOutbox(DATABASE, poll_interval=0.1)
bus = EventBus(registry=REGISTRY, outbox=outbox)


@bus.subscribe(delivery="durable", name="payments.take")
def take_payment(event: OrderPlaced, connection: sqlite3.Connection) -> None:
    """Exactly once: the ledger row and the inbox mark commit together."""
    connection.execute(
        "INSERT INTO ledger (what, order_id) VALUES ('charged', ?)", (event.order_id,)
    )
    bus.publish(PaymentTaken(order_id=event.order_id, amount=event.amount), key=event.order_id)


@bus.subscribe(delivery="durable", name="notifications.receipt")
def send_receipt(event: PaymentTaken, connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO ledger (what, order_id) VALUES ('receipt', ?)", (event.order_id,)
    )


def _ledger() -> None:
    with closing(sqlite3.connect(DATABASE)) as connection, connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS ledger (what TEXT NOT NULL, order_id TEXT NOT NULL)"
        )


_ledger()


def publish(count: int) -> None:
    connection = sqlite3.connect(DATABASE, isolation_level=None)
    for number in range(count):
        with bus.transaction(connection):
            bus.publish(OrderPlaced(order_id=f"o-{number}", amount=number), key=f"o-{number}")
    deadline = time.monotonic() + 60
    while outbox.status().pending and time.monotonic() < deadline:
        time.sleep(0.05)
    connection.close()
    bus.close()


if __name__ == "__main__":
    publish(int(sys.argv[2]))
