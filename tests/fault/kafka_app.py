"""The application of the Kafka fault tests, run by ``eventbus worker`` in processes the
tests kill: a durable handler that applies each event exactly once (its effect row and
its inbox mark commit together in ``FAULT_DATABASE``), and dies on a poison event.

Settings come from the environment, as for any application: ``EVENTBUS_TRANSPORT_URL``,
``EVENTBUS_GROUP``, ``EVENTBUS_MAX_DELIVERIES``; ``FAULT_DATABASE`` is the worker's
SQLite file (outbox, inbox, effects, dead letters).
"""

from __future__ import annotations

import os
import signal
import sqlite3

from eventbus import (
    EventBus,
    EventRegistry,
    RetryPolicy,
    SQLiteDeadLetterStore,
    SQLiteOutbox,
    event,
)

REGISTRY = EventRegistry()
DATABASE = os.environ.get("FAULT_DATABASE", "fault.sqlite3")


@event("fault.keyed", registry=REGISTRY)
class Keyed:
    key: str
    seq: int
    poison: bool = False


def create_tables(path: str) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS effects "
            "(key TEXT NOT NULL, seq INTEGER NOT NULL, pid INTEGER NOT NULL)"
        )


create_tables(DATABASE)
bus = EventBus(
    registry=REGISTRY,
    outbox=SQLiteOutbox(DATABASE, poll_interval=0.1),
    dead_letters=SQLiteDeadLetterStore(DATABASE),
    retry=RetryPolicy.never(),
    relay=False,
)


@bus.subscribe(delivery="durable", name="fault.apply")
def apply(event: Keyed, connection: sqlite3.Connection) -> None:
    """Exactly once: the effect row commits with the inbox mark (no unique constraint on
    effects, so a second run would show as a second row)."""
    if event.poison:
        os.kill(os.getpid(), signal.SIGKILL)  # it kills whoever handles it
    connection.execute(
        "INSERT INTO effects (key, seq, pid) VALUES (?, ?, ?)", (event.key, event.seq, os.getpid())
    )
