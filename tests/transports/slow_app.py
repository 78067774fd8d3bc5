"""A worker app whose handler takes its time: for the graceful-shutdown test.

``eventbus worker --app tests.transports.slow_app:bus``; the handler writes 'started' and,
1.5 s later, 'finished' to the ledger in ``SLOW_DATABASE``.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

from eventbus import EventBus, SQLiteOutbox
from tests.transports.slow_events import REGISTRY, ReportRequested

# Outside the checkout when a test forgets to set it: a stray database must not be committed.
DATABASE = os.environ.get(
    "SLOW_DATABASE", str(Path(tempfile.gettempdir()) / "eventbus-slow.sqlite3")
)

bus = EventBus(registry=REGISTRY, outbox=SQLiteOutbox(DATABASE))


def note(what: str, report_id: str) -> None:
    with closing(sqlite3.connect(DATABASE, timeout=10)) as connection, connection:
        connection.execute("CREATE TABLE IF NOT EXISTS ledger (what TEXT, report_id TEXT)")
        connection.execute("INSERT INTO ledger VALUES (?, ?)", (what, report_id))


@bus.subscribe(delivery="durable", name="reports.build")
def build(event: ReportRequested) -> None:
    note("started", event.report_id)
    time.sleep(1.5)
    note("finished", event.report_id)
