"""What happened, as the bus's hooks saw it, in every process: kept in the shop's database.

Each process that builds the shop (the scenario, the workers, the ``eventbus`` command
that replays dead letters) records every event it publishes and what each of its
handlers made of it, in two tables of the shop's database. So the scenario can print the
whole flow, and tell when it has come to rest, wherever the handlers ran.

Hooks observe and never decide: recording changes no delivery. Receivers run in the
thread that did the step, often inside a transaction that holds SQLite's only write lock:
a write from there would wait for that very lock. So receivers only queue a record, and
one thread per process writes the queue, in batches, on a connection of its own.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from typing import Any

import attrs

from eventbus import Envelope, EventBus, hooks

from .db import Database

__all__ = ["TABLES", "FlowRecorder", "Outcome", "Step", "read_flow"]

logger = logging.getLogger("examples.shop.flow")

TABLES = {
    # One row per event, written by the process that published it (or, if that one did
    # not record it, by the first that handled it).
    "flow_events": """CREATE TABLE IF NOT EXISTS flow_events (
        envelope_id TEXT PRIMARY KEY,
        causation_id TEXT,
        correlation_id TEXT,
        name TEXT NOT NULL,
        order_id TEXT,
        handlers TEXT NOT NULL
    )""",
    # What a handler did with an event, in the order each process saw it: a process's
    # records are keyed by its own sequence, so processes never contend for an id.
    "flow_outcomes": """CREATE TABLE IF NOT EXISTS flow_outcomes (
        process TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_ns BIGINT NOT NULL,
        envelope_id TEXT NOT NULL,
        handler TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        PRIMARY KEY (process, seq)
    )""",
}

FINAL = frozenset({"ok", "dead_letter", "refused"})
"""Outcomes after which a handler does nothing more with the event (unless replayed)."""

_Record = tuple[dict[str, object], dict[str, object] | None]
"""An event's row, and the outcome's row if the record is one."""


@attrs.frozen
class Outcome:
    handler: str
    kind: str
    """``ok``, ``retry``, ``dead_letter``, or ``refused`` (an inline handler raised)."""
    detail: str
    """For people: ``inventory.reserve_stock ok``, a retry, a dead letter."""
    pid: int
    """The process it happened in."""


@attrs.define
class Step:
    envelope_id: str
    causation_id: str | None
    correlation_id: str | None
    name: str
    order_id: str | None
    handlers: tuple[str, ...]
    """Every handler the event reaches, whatever process runs it."""
    outcomes: list[Outcome] = attrs.Factory(list)

    def unfinished(self) -> list[str]:
        """The handlers that have not told their last word on this event yet."""
        if any(outcome.kind == "refused" for outcome in self.outcomes):
            return []  # the publish was rolled back: the others never get it
        last = {outcome.handler: outcome.kind for outcome in self.outcomes}
        return [handler for handler in self.handlers if last.get(handler) not in FINAL]


def read_flow(db: Database) -> list[Step]:
    """Every event recorded, by id (UUIDv7: publish order), with its outcomes in order."""
    with db.connect() as connection:
        events = connection.fetch_all("SELECT * FROM flow_events ORDER BY envelope_id")
        outcomes = connection.fetch_all(
            "SELECT process, envelope_id, handler, kind, detail FROM flow_outcomes "
            "ORDER BY at_ns, process, seq"
        )
    steps = {
        row["envelope_id"]: Step(
            envelope_id=row["envelope_id"],
            causation_id=row["causation_id"],
            correlation_id=row["correlation_id"],
            name=row["name"],
            order_id=row["order_id"],
            handlers=tuple(row["handlers"].split()),
        )
        for row in events
    }
    for row in outcomes:
        step = steps.get(row["envelope_id"])
        if step is not None:
            pid = int(row["process"].partition("-")[0])
            step.outcomes.append(Outcome(row["handler"], row["kind"], row["detail"], pid))
    return list(steps.values())


class FlowRecorder:
    """Records every publish on ``bus`` into ``db`` from now until ``close()``."""

    def __init__(self, bus: EventBus, db: Database) -> None:
        self._bus = bus
        self._db = db
        # The pid for people; the suffix keeps a later process that reuses it apart.
        self.process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = itertools.count()
        self._queue: queue.Queue[_Record | None] = queue.Queue()  # None: stop
        self._closed = False
        self._writer = threading.Thread(target=self._write_queue, name="shop-flow", daemon=True)
        self._writer.start()
        self._receivers = (
            (hooks.event_published, self._published),
            (hooks.event_handled, self._handled),
            (hooks.handler_failed, self._failed),
            (hooks.handler_retrying, self._retrying),
            (hooks.event_dead_lettered, self._dead_lettered),
        )
        for signal, receiver in self._receivers:
            signal.connect(receiver, sender=bus, weak=False)
        # The eventbus command (a worker, a replay) ends its process without telling the
        # shop: what is still queued then is written on the way out.
        atexit.register(self.close)

    def flush(self) -> None:
        """Wait until everything recorded so far is in the database."""
        self._queue.join()

    def close(self) -> None:
        """Stop recording and write what is queued."""
        if self._closed:
            return
        self._closed = True
        for signal, receiver in self._receivers:
            # From every sender: blinker keeps a receiver disconnected from one sender
            # among the signal's receivers (and the bus would go on tracking for it).
            signal.disconnect(receiver)
        self._queue.put(None)
        self._writer.join(timeout=10)
        atexit.unregister(self.close)

    # -- the receivers: queue only ------------------------------------------------------

    def _event(self, envelope: Envelope) -> dict[str, object]:
        handlers = self._bus.handlers_for(type(envelope.event))
        order_id = getattr(envelope.event, "order_id", envelope.key)
        return {
            "envelope_id": str(envelope.id),
            "causation_id": None if envelope.causation_id is None else str(envelope.causation_id),
            "correlation_id": (
                None if envelope.correlation_id is None else str(envelope.correlation_id)
            ),
            "name": envelope.name,
            "order_id": None if order_id is None else str(order_id),
            "handlers": " ".join(handler.name for handler in handlers),
        }

    def _note(self, envelope: Envelope, handler: str, kind: str, detail: str) -> None:
        if self._closed:
            return
        outcome = {
            "process": self.process,
            "seq": next(self._seq),
            "at_ns": time.time_ns(),
            "envelope_id": str(envelope.id),
            "handler": handler,
            "kind": kind,
            "detail": detail,
        }
        # The event too: it may have been published where nothing recorded it.
        self._queue.put((self._event(envelope), outcome))

    def _published(self, _bus: EventBus, *, envelope: Envelope, **_: Any) -> None:
        if not self._closed:
            self._queue.put((self._event(envelope), None))

    def _handled(self, _bus: EventBus, *, envelope: Envelope, handler: str, **_: Any) -> None:
        self._note(envelope, handler, "ok", f"{handler} ok")

    def _failed(
        self, _bus: EventBus, *, envelope: Envelope, handler: str, error: Exception, **_: Any
    ) -> None:
        # Other handlers' failures are told by the retry or the dead letter that follows;
        # an inline one's reaches the publisher, whose transaction rolls back.
        inline = any(h.name == handler and h.delivery == "inline" for h in self._bus.handlers)
        if inline:
            detail = f"{handler} raised {type(error).__name__} to the publisher"
            self._note(envelope, handler, "refused", detail)

    def _retrying(
        self,
        _bus: EventBus,
        *,
        envelope: Envelope,
        handler: str,
        error: Exception,
        attempt: int,
        delay: float,
        **_: Any,
    ) -> None:
        failed = f"attempt {attempt} failed ({type(error).__name__})"
        detail = f"{handler} {failed}, retry in {delay:.1f}s"
        self._note(envelope, handler, "retry", detail)

    def _dead_lettered(
        self, _bus: EventBus, *, envelope: Envelope, handler: str, error: Exception, **_: Any
    ) -> None:
        detail = f"{handler} gave up ({type(error).__name__}): dead letter"
        self._note(envelope, handler, "dead_letter", detail)

    # -- the writer thread ----------------------------------------------------------------

    def _write_queue(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [item for item in batch if item is not None]
            try:
                if records:
                    self._write(records)
            except Exception:
                logger.exception("could not record %d steps of the event flow", len(records))
            finally:
                for _ in batch:
                    self._queue.task_done()
            if len(records) < len(batch):
                return

    def _write(self, records: list[_Record]) -> None:
        with self._db.transaction() as tx:
            for event, outcome in records:
                tx.execute(
                    "INSERT INTO flow_events (envelope_id, causation_id, correlation_id, name, "
                    "order_id, handlers) VALUES (:envelope_id, :causation_id, :correlation_id, "
                    ":name, :order_id, :handlers) ON CONFLICT (envelope_id) DO NOTHING",
                    **event,
                )
                if outcome is not None:
                    tx.execute(
                        "INSERT INTO flow_outcomes (process, seq, at_ns, envelope_id, handler, "
                        "kind, detail) VALUES (:process, :seq, :at_ns, :envelope_id, :handler, "
                        ":kind, :detail)",
                        **outcome,
                    )
