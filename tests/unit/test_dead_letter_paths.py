"""Every dead letter takes one path (DeadLetter.raw or from_failure, then bury): uuid7
ids, masked texts, and a letter that cannot be stored never loses its message."""

from __future__ import annotations

import contextlib
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbus import (
    EventBus,
    EventRegistry,
    RetryPolicy,
    SQLiteDeadLetterStore,
    SQLiteOutbox,
    event,
)
from eventbus.outbox import PendingRow

REGISTRY = EventRegistry()


@event("paths.order_placed", registry=REGISTRY)
class OrderPlaced:
    order_id: str


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def rows(path: Path) -> list[tuple[int, str | None]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT attempts, last_error FROM eventbus_outbox").fetchall()


def test_an_undecodable_outbox_row_becomes_a_raw_letter_with_a_uuid7(tmp_path: Path) -> None:
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
    bus = EventBus(registry=REGISTRY, outbox=outbox)

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None:
        pytest.fail("nothing decodable reaches the handler")

    envelope_id = uuid.uuid4()
    outbox.write_now([PendingRow(envelope_id, "paths.gone", "billing.charge", None, b"{oops")])
    try:
        bus.start()
        wait_for(lambda: bus.dead_letters.count() == 1, "the raw letter")
        wait_for(lambda: rows(tmp_path / "app.db") == [], "the row to be completed")
    finally:
        bus.close()
        outbox.close()
    [letter] = bus.dead_letters.list()
    assert letter.id.version == 7
    assert (letter.envelope_id, letter.event_name, letter.handler) == (
        envelope_id,
        "paths.gone",
        "billing.charge",
    )
    assert letter.error_type == "eventbus.errors.DecodeError"
    assert (letter.payload, letter.traceback, letter.attempts) == (b"{oops", "", 1)


def test_a_letter_the_store_refuses_keeps_its_outbox_row(tmp_path: Path) -> None:
    """The dead-letter store fails (here: closed): the relay keeps the row, with why, to
    try again later, instead of completing it and keeping the letter only in a log."""
    outbox = SQLiteOutbox(tmp_path / "app.db", poll_interval=0.05)
    dead_letters = SQLiteDeadLetterStore(tmp_path / "dlq.db")
    dead_letters.close()
    bus = EventBus(
        registry=REGISTRY, outbox=outbox, dead_letters=dead_letters, retry=RetryPolicy.never()
    )

    @bus.subscribe(delivery="durable", name="billing.charge")
    def charge(event: OrderPlaced) -> None:
        raise ConnectionError("card service down")

    outbox.write_now(
        [PendingRow(uuid.uuid4(), "paths.gone", "billing.charge", None, b"{not an envelope")]
    )
    try:
        bus.publish(OrderPlaced(order_id="o-1"))
        bus.start()
        wait_for(
            lambda: sum(1 for _, error in rows(tmp_path / "app.db") if error) == 2,
            "both rows to be kept with why",
        )
    finally:
        bus.close()
        outbox.close()
    errors = sorted(error or "" for _, error in rows(tmp_path / "app.db"))
    assert errors[0].startswith("ConnectionError: card service down (its dead letter could not")
    assert "closed" in errors[0]
    assert errors[1].startswith("cannot be decoded, and its dead letter could not be stored")
