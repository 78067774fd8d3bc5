"""Delivery counts for Kafka, which has none: what a partition's owner handed out, kept at
the broker, and how the next owner reads it.

Kafka redelivers by position: a consumer that dies leaves its partitions' committed
offsets where they were, and the next owner reads on from there. Which of the messages
after that offset killed it, Kafka does not say, and a message that kills every consumer
would come back forever. So each owner keeps, per partition, a small record at the broker
(``HandOut``, in a compacted topic of its group) saying what it may have handed out, and
writes it *before* handing out anything the last record does not cover:

* **live**: ``h``, an offset every message it handed out is below (written ahead, a
  fetch's worth at a time, so a record is written per fetch, not per message), and the
  counts of the messages it handed out again (a nack).
* **clean**: when it lets a partition go in an orderly way (a rebalance, a close), the
  committed offset ``w`` and, exactly, which messages it handed out and never settled,
  with their counts; the others below ``h`` were settled.
* **careful**: the one message it handed out alone, and how often that message has been
  handed out.

The next owner (``PartitionLedger``) reads the record with the committed offset. After a
clean handover it hands the unsettled messages out again, counted, and skips the settled
ones. After a live record (its writer died), any message from the committed offset up to
``h`` may be the one that killed it: it hands them out *carefully*, one at a time, each
after writing a careful record naming it, so that if the process dies again, the next
owner knows exactly which message was in hand and how often. That message's count grows
by one with every death until the worker's ``max_deliveries`` dead-letters it; the
messages around it are counted at most once more than they were really delivered. Past
the careful range the partition is read at full speed again.

Nothing here talks to Kafka: the transport feeds it offsets and writes the records it
asks for.
"""

from __future__ import annotations

import collections
import enum
import json
from typing import Any

import attrs

__all__ = ["HandOut", "PartitionLedger", "Verdict"]


@attrs.frozen
class HandOut:
    """What one owner of a partition may have handed out: the record kept at the broker."""

    h: int
    """Every message the writer handed out (or may hand out before its next record) is below."""
    counts: dict[int, int] = attrs.field(factory=dict)
    """Delivery counts the writer knows (messages handed out more than once; after a
    clean handover, every unsettled message)."""
    careful: int | None = None
    """The message the writer handed out alone (offsets below it were settled)."""
    clean: bool = False
    """Written when the writer let the partition go: offsets in [w, h) not in ``counts``
    were settled."""
    w: int = -1
    """The committed offset when a clean record was written."""

    def encode(self) -> bytes:
        data: dict[str, Any] = {"h": self.h}
        if self.counts:
            data["n"] = {str(offset): count for offset, count in sorted(self.counts.items())}
        if self.careful is not None:
            data["careful"] = self.careful
        if self.clean:
            data["clean"] = True
            data["w"] = self.w
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> HandOut | None:
        """The record, or None for a deletion (a tombstone) or bytes that are not one:
        a record that cannot be read is treated as none, and the partition is read from
        its committed offset (a message is then at worst delivered uncounted once more)."""
        if not data:
            return None
        try:
            raw = json.loads(data)
            counts = {int(offset): int(count) for offset, count in raw.get("n", {}).items()}
            careful = raw.get("careful")
            return cls(
                h=int(raw["h"]),
                counts=counts,
                careful=None if careful is None else int(careful),
                clean=bool(raw.get("clean", False)),
                w=int(raw.get("w", -1)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class Verdict(enum.Enum):
    """What to do with the next message of a partition."""

    IGNORE = "ignore"
    """Taken already (a fetch from before a seek): nothing to do."""
    SKIP = "skip"
    """Settled by an earlier owner: take it without handing it out."""
    WAIT = "wait"
    """Careful: the message handed out alone is not settled yet."""
    DELIVER = "deliver"
    """Hand it out (after writing ``PartitionLedger.record``, if set)."""


class PartitionLedger:
    """One owned partition: what was handed out, what was settled, what to commit.

    ``committed`` is where reading starts (the group's committed offset, or the
    partition's first), ``state`` the last record at the broker, and ``ahead`` how far
    past the next message a live record reaches (so a record is written once per
    ``ahead`` messages; after a death, up to that many messages that were never handed out
    are read carefully too, and counted once more than they were delivered).
    """

    def __init__(self, committed: int, state: HandOut | None, *, ahead: int) -> None:
        self.committed = committed
        """The watermark: every message below it is settled (what to commit)."""
        self._ahead = max(1, ahead)
        self._pending: dict[int, int] = {}
        """Counts of messages not taken yet that were handed out before: offset -> the
        count of their last delivery."""
        self._unknown = 1
        """The count of the last delivery of a careful-range message the record has no
        count for: 1, it may have been handed out once (0 outside a careful range)."""
        self._skip_below = committed
        """Offsets below this were settled by a careful writer (not committed yet)."""
        self._careful_end = committed
        """Messages below this are handed out one at a time."""
        self._clean_end = committed
        """Below this, after a clean handover, offsets not in ``_pending`` were settled."""
        self._recorded_h = committed
        """What the last record written covers: handing out at or past it writes first."""
        self._order: collections.deque[int] = collections.deque()
        """Offsets taken (handed out or skipped), in order, not yet below the watermark."""
        self._settled: set[int] = set()
        self._out: dict[int, int] = {}
        """Handed out and not settled: offset -> its delivery count."""
        self.highest = committed - 1
        """The highest offset taken so far."""
        self.record: HandOut | None = None
        """The record to write before handing out the message ``admit`` let through."""
        if state is None or state.h <= committed:
            return
        self._recorded_h = state.h
        if state.clean and state.w == committed:
            self._pending = {o: c for o, c in state.counts.items() if o >= committed}
            self._clean_end = state.h
            return
        # Its writer died (or its record is older than the commit): what it may have
        # handed out is read carefully, each message counted once more than the record says.
        start = committed
        if state.careful is not None and not state.clean and state.careful > committed:
            start = state.careful  # the careful writer settled everything below it
            self._skip_below = start
        self._pending = {o: c for o, c in state.counts.items() if o >= start}
        self._careful_end = max(state.h, start)

    @property
    def careful(self) -> bool:
        """Whether messages are still handed out one at a time (after a writer died)."""
        return self.highest + 1 < self._careful_end

    def is_careful(self, offset: int) -> bool:
        """Whether the message at ``offset`` is to be handed out alone."""
        return self.highest < offset < self._careful_end

    @property
    def careful_out(self) -> bool:
        """Whether a message handed out alone is not settled yet."""
        return any(o < self._careful_end for o in self._out)

    def _last_count(self, offset: int) -> int:
        """The count of the message's last delivery before this one (0: never)."""
        if offset in self._pending:
            return self._pending[offset]
        return 1 if offset < self._careful_end else 0

    def admit(self, offset: int) -> tuple[Verdict, int]:
        """The verdict on the partition's next message and, to deliver, its count. Sets
        ``record`` to what must be written at the broker first (or None)."""
        self.record = None
        if offset <= self.highest:
            return Verdict.IGNORE, 0
        if offset < self._skip_below:
            return Verdict.SKIP, 0
        if offset < self._clean_end and offset not in self._pending:
            return Verdict.SKIP, 0
        if offset < self._careful_end:
            if self._out:
                return Verdict.WAIT, 0
            count = self._last_count(offset) + 1
            self.record = self._careful_record(offset, count)
            return Verdict.DELIVER, count
        if self.careful_out:
            return Verdict.WAIT, 0  # the careful range ends when its last message is settled
        count = self._last_count(offset) + 1
        if offset >= self._recorded_h or count > 1:
            self._recorded_h = max(self._recorded_h, offset + self._ahead)
            self.record = HandOut(h=self._recorded_h, counts=self._counts(offset, count))
        return Verdict.DELIVER, count

    def _counts(self, offset: int, count: int) -> dict[int, int]:
        """Counts for a live record: messages delivered more than once, handed out now or
        waiting to be handed out again, and ``offset``, about to be handed out ``count``-th
        (a message the record does not name counts as delivered once, if at all)."""
        counts = {o: c for o, c in self._pending.items() if c > 1}
        counts.update((o, c) for o, c in self._out.items() if c > 1)
        if count > 1:
            counts[offset] = count
        return counts

    def _careful_record(self, offset: int, count: int) -> HandOut:
        return HandOut(
            h=max(self._recorded_h, self._careful_end),
            counts={**{o: c for o, c in self._pending.items() if c > 1}, offset: count},
            careful=offset,
        )

    def taken(self, offset: int, count: int | None) -> None:
        """The message at ``offset`` was handed out with ``count``, or skipped (None)."""
        self.highest = max(self.highest, offset)
        self._pending.pop(offset, None)
        self._order.append(offset)
        if count is None:
            self._settle(offset)
        else:
            self._out[offset] = count

    def again(self, offset: int) -> tuple[int, HandOut]:
        """A handed-out message is handed out once more (a nack): its new count, and the
        record to write first."""
        count = self._out[offset] + 1
        self._out[offset] = count
        if offset < self._careful_end:
            return count, self._careful_record(offset, count)
        h = max(self._recorded_h, self.highest + 1)
        return count, HandOut(h=h, counts=self._counts(offset, count))

    def settle(self, offset: int) -> None:
        """The message at ``offset`` is done with (acknowledged, or dropped by a nack)."""
        if self._out.pop(offset, None) is not None:
            self._settle(offset)

    def _settle(self, offset: int) -> None:
        self._settled.add(offset)
        while self._order and self._order[0] in self._settled:
            done = self._order.popleft()
            self._settled.discard(done)
            self.committed = done + 1

    @property
    def unsettled(self) -> int:
        """Messages handed out and not settled yet."""
        return len(self._out)

    def handover(self) -> HandOut | None:
        """The record to leave when this owner lets the partition go in an orderly way
        (after committing ``committed``), or None to leave the last one as it is (a
        careful range not finished: the next owner goes on with it)."""
        if self.careful or self.careful_out:
            return None
        counts = {**self._pending, **self._out}
        h = max(self.highest + 1, self.committed, self._clean_end, *(o + 1 for o in counts))
        return HandOut(h=h, counts=counts, clean=True, w=self.committed)
