"""The worker side of the latency benchmark: ``eventbus worker --app latency_app:bus``.

Its handler appends, per event, the seconds since the publisher's commit to the file
``LATENCY_RECORD``; the transport comes from ``EVENTBUS_TRANSPORT_URL``, like any app.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from eventbus import EventBus, EventRegistry, SQLiteOutbox, event

REGISTRY = EventRegistry()


@event("bench.stamped", registry=REGISTRY)
class Stamped:
    number: int
    committed_at: float
    """time.time() just before the publisher's commit."""


bus = EventBus(
    registry=REGISTRY,
    outbox=SQLiteOutbox(
        os.environ.get(
            "LATENCY_DATABASE", str(Path(tempfile.gettempdir()) / "eventbus-latency.sqlite3")
        )
    ),
    relay=False,
)


@bus.subscribe(delivery="durable", name="bench.record")
def record(event: Stamped) -> None:
    with open(os.environ.get("LATENCY_RECORD", "latencies.txt"), "a") as file:  # noqa: PTH123
        file.write(f"{time.time() - event.committed_at}\n")
