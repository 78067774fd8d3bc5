"""The relay: moves committed outbox rows to a sink, at least once.

It claims a batch in one short statement (a lease stamped by the database clock), hands
it to its *sink* outside any transaction, then completes or reschedules each row in
another short statement fenced by its lease owner. A claim takes a key's rows only from
its first (no earlier row of the key left in any state): one per key, or a run of them in
order where the store can (``SupportsClaimRuns``) and the sink keeps a run's order
(``Sink.per_key``), so a key's events reach the sink in outbox order even across retries
and relays. A
commit in this process wakes it at once; polling every ``poll_interval`` is the safety
net that makes it correct (a row committed by another process, a lease that ran out).

The outbox knows nothing of what is behind the sink (Watermill's forwarder is the model):
``Relay(store, sink)``, where the bus chooses the sink, this process's durable handlers
(``eventbus.outbox._local``) or a forwarder to its transport
(``eventbus.transports._forward``). A sink says, per row, what became of it (finished, to
be completed with the inbox marks it names, or to be retried later) in the ``Batch`` it
fills; the relay does the rest with the store.

The next batch is claimed while the one in hand is being finished (published, its async
handlers run): the stages overlap, so a relay whose database and broker are across a
network is bounded by the slower of them, not their sum. One batch is finished at a time.
A batch makes one trip to a worker thread: the claim, the sink's ``take`` (what can be
done there), and, when the sink left nothing for the loop, the completion. The rest is
the sink's ``finish``, on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Protocol

import attrs

from .._redact import masked_logger
from ..typing import SupportsClaimRuns, SupportsListen

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._records import ClaimedRow
    from .._runtime import Runtime
    from ..typing import OutboxStore

__all__ = ["Batch", "Relay", "Retry", "Sink"]

logger = masked_logger("eventbus.relay")


@attrs.frozen
class Retry:
    """A row to put back for a later attempt, ``delay`` seconds from now."""

    row: ClaimedRow
    error: str
    """Why, masked (``describe_error``): the store keeps it with the row."""
    delay: float
    count_attempt: bool = True
    """False when the row is not to blame (the database was busy, no handler here)."""
    waited: bool = True
    """Whether this relay makes that attempt itself, so drain waits for it (False: a row
    another process is to take, or one the broker did not confirm)."""


@attrs.define(eq=False)
class Batch:
    """A claimed batch on its way through the relay and its sink (which may subclass it
    to keep what it needs between ``take`` and ``finish``)."""

    rows: list[ClaimedRow]
    finished: list[int] = attrs.Factory(list)
    """Row ids to complete: delivered, duplicates, buried."""
    processed: list[tuple[str, uuid.UUID]] = attrs.Factory(list)
    """Inbox marks (handler, envelope id) the completion writes."""
    retries: list[Retry] = attrs.Factory(list)
    left: bool = False
    """Whether the sink has work left for the loop; if not, the worker thread that
    claimed the batch completes it."""
    completed: int | None = None
    """Rows the worker thread completed (None: completing is left to the loop)."""
    error: Exception | None = None
    """Why the worker thread could not complete the batch (raised on the loop)."""


class Sink(Protocol):
    """Where a relay's rows go: this process's handlers, or a transport."""

    @property
    def per_key(self) -> int:
        """Rows of one key it takes per claim, in order, where the store can claim runs
        (``SupportsClaimRuns``); 1 where it must see each confirmed before the next."""

    def take(self, rows: list[ClaimedRow]) -> Batch:
        """On the worker thread that claimed ``rows``: what can be done there; the batch
        says which rows are finished, which to retry, and whether work is left."""

    async def finish(self, batch: Batch) -> None:
        """On the loop, before the completion: the rest (always called)."""

    def relayed(self, batch: Batch) -> None:
        """On the loop, once the finished rows are completed: tell the observers."""


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"


_DUE_MARGIN = 1.0
"""Seconds past its due time (on this process's clock) after which a row this relay put
back, and that a claim did not return, is taken to be another relay's."""


class Relay:
    """Delivers the rows of ``store`` to ``sink``, on ``runtime``."""

    def __init__(self, store: OutboxStore, sink: Sink, *, runtime: Runtime) -> None:
        self._outbox = store
        self._sink = sink
        self._runtime = runtime
        self._batch = store.batch
        self._lease = store.lease
        self._poll_interval = store.poll_interval
        self._runs = isinstance(store, SupportsClaimRuns)
        """Whether the store can lease several rows of one key per claim."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # asyncio.Event binds to a loop on first use, not here, so these may be made early.
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._delivered = False
        self._cycle = 0
        self._quiet_cycle = 0
        self._stopping = False
        self._stopped = False
        self._in_flight: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self.active = False
        """Whether ``run`` is scheduled or running (the lifecycle sets it when it hands
        ``run`` to the runtime; ``run`` clears it when it ends)."""
        # Rows this relay put back for a later attempt: id -> (handler, when it is due, on
        # the monotonic clock). They are in flight: drain waits for them.
        self._waiting: dict[int, tuple[str, float]] = {}
        self._waiting_lock = threading.Lock()

    def rearm(self) -> None:
        """Get ready to ``run`` again after a stop, on whatever loop runs it next.

        The rows waiting for a retry are kept: they are still this process's to wait for.
        """
        self._wake = asyncio.Event()
        self._quiet = asyncio.Event()
        self._delivered = False
        self._stopping = False
        self._stopped = False
        self._task = None

    def nudge(self) -> None:
        """A commit wrote rows: look now instead of at the next poll (thread-safe)."""
        self._runtime.call_soon(self._wake.set)

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self._stopping = True
        self.nudge()

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop, and wait (up to ``timeout``) until ``run`` returned: the batch in hand is
        finished, its rows completed or put back (call on the runtime's loop)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            await asyncio.wait([task], timeout=timeout)

    # -- what drain waits for ------------------------------------------------------------

    def next_due(self) -> float | None:
        """Seconds until the first row this relay put back for a retry is due (<= 0: due
        now); None when no row waits."""
        with self._waiting_lock:
            if not self._waiting:
                return None
            return min(due for _, due in self._waiting.values()) - time.monotonic()

    def unfinished(self) -> str:
        """What this relay still holds or waits for, in words (empty: nothing)."""
        parts = []
        in_hand = len(self._in_flight)
        if in_hand:
            parts.append(f"{in_hand} outbox {_rows(in_hand)} in delivery")
        with self._waiting_lock:
            waiting = list(self._waiting.values())
        if waiting:
            now = time.monotonic()
            by_handler: dict[str, list[float]] = {}
            for handler, due in waiting:
                by_handler.setdefault(handler, []).append(due - now)
            named = ", ".join(
                f"{handler}: {len(dues)}, next in {max(0.0, min(dues)):.1f}s"
                for handler, dues in sorted(by_handler.items())
            )
            parts.append(
                f"{len(waiting)} outbox {_rows(len(waiting))} waiting for a retry ({named})"
            )
        return "; ".join(parts)

    def _waits(self, row: ClaimedRow, delay: float) -> None:
        """``row`` was put back for another attempt in ``delay`` seconds (worker thread).

        Its due time is taken after the database stamped its own, so it is never earlier
        than the time the database makes the row claimable again."""
        with self._waiting_lock:
            self._waiting[row.id] = (row.destination, time.monotonic() + delay)

    def _claimed(self, started: float, rows: list[ClaimedRow]) -> None:
        """A claim that started at ``started`` took ``rows`` (worker thread)."""
        with self._waiting_lock:
            if not self._waiting:
                return
            for row in rows:
                self._waiting.pop(row.id, None)
            if len(rows) < self._batch:
                # A short claim took every row that was claimable. A row of ours that was
                # due well before it started, and is not among them, is another relay's
                # now (or delivered by it): this process no longer waits for it. "Well":
                # the database's clock is coarser than ours (SQLite's 'now' is whole
                # milliseconds), so a row due a moment ago may not be due there yet.
                for row_id, (_, due) in list(self._waiting.items()):
                    if due <= started - _DUE_MARGIN:
                        del self._waiting[row_id]

    async def settle(self) -> bool:
        """Wake the relay and wait until a claim finds nothing due.

        Returns whether it delivered anything meanwhile (then callers look again, as the
        deliveries may have published more).
        """
        self._delivered = False
        if self._stopped or not self.active:
            return False  # nothing runs to ask
        # Only a claim that starts after this request counts: one already under way may
        # have read the outbox before a commit this caller wants to see delivered.
        wanted = self._cycle + 1
        while True:
            self._quiet.clear()
            self._wake.set()
            await self._quiet.wait()
            if self._quiet_cycle >= wanted or self._stopped:
                return self._delivered

    async def run(self) -> None:
        """Claim and deliver until stopped.

        Two stages overlap: while one batch is being finished on the loop (published to
        a transport, or its async handlers run; then completed), the next is claimed and worked
        on a worker thread, so throughput is bounded by the slower stage, not their sum.
        Per-key order holds because a row is not claimable while an earlier row of its
        key is left in any state (one in flight included). At most one batch is being
        finished at a time, and only a full batch is followed by a claim at once: after a
        short one, the next claim waits for its completion.
        """
        self._task = asyncio.current_task()
        try:
            await self._relay()
        except Exception:
            # A bug, not a delivery's failure (those are handled inside): say so, and let
            # the next commit start the relay again rather than leave drain waiting.
            logger.exception("the relay stopped on an error; the next commit starts it again")
        finally:
            self.active = False
            self._stopped = True
            self._quiet.set()  # nobody waits for a relay that has stopped

    async def _relay(self) -> None:
        renewer = asyncio.create_task(self._renew_leases())
        stop_listening = await self._listen()
        finishing: asyncio.Task[None] | None = None
        try:
            while not self._stopping:
                self._wake.clear()
                self._cycle += 1
                cycle = self._cycle
                # One trip to a worker thread per batch: the claim, the sink's share of the
                # work (for handlers: decode, the inbox check, the plain sync handlers) and,
                # when it left nothing for the loop, the completion.
                try:
                    batch = await self._runtime.run_sync(self._claim_and_work)
                except Exception:
                    # Working the batch failed outside any handler (settling it, say): its
                    # rows stay leased and come back when the lease runs out.
                    self._delivered = True
                    logger.exception("the relay could not settle a batch; it goes on")
                    await asyncio.sleep(self._poll_interval)
                    continue
                if batch is not None:
                    self._delivered = True
                    if finishing is not None:
                        await finishing
                    finishing = asyncio.create_task(self._finish_guarded(batch))
                    if len(batch.rows) < self._batch:
                        # A short batch took all that was claimable: what comes next is
                        # mostly the rows its completion unblocks (its keys' next rows),
                        # so a claim before it is finished would scan for nothing.
                        await finishing
                        finishing = None
                    continue
                if finishing is not None:
                    # Nothing claimable, but the batch in hand may unblock its keys'
                    # next rows, or publish more: look again once it is finished.
                    await finishing
                    finishing = None
                    continue
                self._quiet_cycle = cycle
                self._quiet.set()
                try:
                    async with asyncio.timeout(self._poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if finishing is not None and not finishing.done():
                # Stopping: the batch in hand is finished first (cancelled with us, if
                # the runtime is shutting down hard).
                try:
                    await asyncio.shield(finishing)
                except asyncio.CancelledError:
                    finishing.cancel()
                    raise
            renewer.cancel()
            if stop_listening is not None:
                stop_listening()
            self._stopped = True
            self._quiet.set()  # nobody waits for a relay that has stopped

    async def _listen(self) -> Callable[[], None] | None:
        """Be woken by commits in other processes, where the store can tell (PostgreSQL
        LISTEN); returns how to stop. Only an early wake-up: when it cannot start (no
        connection, or no new thread in an exiting Python 3.12), polling carries on."""
        store = self._outbox
        if not isinstance(store, SupportsListen):
            return None
        try:
            stop: Callable[[], None] | None = await self._runtime.run_sync(store.listen, self.nudge)
        except Exception:
            logger.warning(
                "the relay cannot listen for commits in other processes; it polls every %ss",
                self._poll_interval,
                exc_info=True,
            )
            return None
        return stop

    async def _finish_guarded(self, batch: Batch) -> None:
        """Finish a batch; a database error while settling it (a lock held too long, a
        lost connection) leaves its rows leased, to come back when the lease runs out.
        The relay itself must go on."""
        try:
            await self._finish(batch)
        except Exception:
            self._delivered = True
            logger.exception("the relay could not settle a batch; it goes on")
            await asyncio.sleep(self._poll_interval)

    def _claim_and_work(self) -> Batch | None:
        """On a worker thread: claim a batch and do its thread work; None when nothing
        was claimed (or the claim failed: the next cycle tries again)."""
        started = time.monotonic()
        try:
            rows = self._claim()
        except Exception:
            logger.exception("the relay could not claim outbox rows; trying again")
            return None
        self._claimed(started, rows)
        if not rows:
            return None
        # Set operations on ints are atomic under the GIL: the renewer on the loop may read
        # the set while this thread changes it.
        self._in_flight.update(row.id for row in rows)
        try:
            batch = self._sink.take(rows)
            if not batch.left:
                self._settle_here(batch)
        except BaseException:
            self._in_flight.difference_update(row.id for row in rows)
            raise
        return batch

    def _claim(self) -> list[ClaimedRow]:
        """Lease a batch: runs of a key where the store and the sink both can."""
        store = self._outbox
        if self._runs:
            per_key = min(self._sink.per_key, self._batch)
            if per_key > 1:
                assert isinstance(store, SupportsClaimRuns)
                return store.claim_runs(
                    owner=self.owner, batch=self._batch, lease=self._lease, per_key=per_key
                )
        return store.claim(owner=self.owner, batch=self._batch, lease=self._lease)

    def _settle_here(self, batch: Batch) -> None:
        """On the worker thread, when the sink left nothing for the loop (the usual case):
        put back the rows to retry and complete the rest."""
        retries, batch.retries = batch.retries, []
        for retry in retries:
            self._reschedule_now(retry)
        if batch.finished:
            try:
                batch.completed = self._outbox.complete(
                    batch.finished, owner=self.owner, processed=batch.processed
                )
            except Exception as error:  # raised on the loop, once the sink's hooks are sent
                batch.error = error

    async def _finish(self, batch: Batch) -> None:
        """On the loop: the sink finishes the batch, then its rows are put back or
        completed (unless done already), and the sink tells the observers."""
        try:
            await self._sink.finish(batch)
            for retry in batch.retries:
                await self._runtime.run_sync(self._reschedule_now, retry)
            if batch.error is not None:
                raise batch.error
            finished = batch.finished
            count = batch.completed
            if count is None and finished:
                count = await self._runtime.run_sync(
                    functools.partial(
                        self._outbox.complete,
                        finished,
                        owner=self.owner,
                        processed=batch.processed,
                    )
                )
            self._sink.relayed(batch)
            if count is not None and count != len(finished):
                logger.warning(
                    "%d finished outbox rows were no longer leased to this relay (lease ran "
                    "out); another relay may deliver them again (receivers deduplicate by "
                    "envelope id)",
                    len(finished) - count,
                )
        finally:
            self._in_flight.difference_update(row.id for row in batch.rows)

    def _reschedule_now(self, retry: Retry) -> None:
        """Put a row back for a later attempt (worker thread)."""
        row = retry.row
        attempts = row.attempts + 1 if retry.count_attempt else row.attempts
        kept = self._outbox.reschedule(
            row.id, owner=self.owner, attempts=attempts, delay=retry.delay, error=retry.error
        )
        if not kept:
            logger.warning("outbox row %d was taken over by another relay mid-delivery", row.id)
        elif retry.waited:
            self._waits(row, retry.delay)

    async def _renew_leases(self) -> None:
        """Keep the leases of rows in delivery alive, so a slow handler is not taken over."""
        while True:
            await asyncio.sleep(self._lease / 3)
            in_flight = list(self._in_flight)
            if in_flight:
                try:
                    await self._runtime.run_sync(
                        functools.partial(
                            self._outbox.renew, in_flight, owner=self.owner, lease=self._lease
                        )
                    )
                except Exception:
                    logger.exception("the relay could not renew its leases")
