"""The relay: moves committed outbox rows to their durable handlers, at least once.

It claims a batch in one short statement (a lease stamped by the database clock),
delivers outside any transaction, then completes or reschedules each row in another
short statement fenced by its lease owner. Rows are claimed at most one per key, so a
key's events reach its handler in outbox order even across retries and relays. A commit
in this process wakes it at once; polling every ``poll_interval`` is the safety net that
makes it correct (a row committed by another process, a lease that ran out).

The next batch is claimed while the one in hand is being finished (published, its
async handlers run): the stages overlap, so a relay whose database and broker are across a
network is bounded by the slower of them, not their sum. One batch is finished at a time.

A batch makes one trip to a worker thread: claim, decode, the inbox check (answered by
the claim itself where the store can), plain sync handlers for up to ``_INLINE_BUDGET``,
and, when nothing is left, the completion. Only what needs the loop goes back to it:
async and connection-taking handlers, slow sync handlers (spread over all the worker
threads), failures and the hooks.

Durable handlers get an inbox keyed by (handler, envelope id): a row delivered again
after a crash is recognised and not handled twice. A handler that takes a
``sqlite3.Connection`` gets one with an open transaction in which its inbox mark is
written too, so its effects and the mark commit together: exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import sqlite3
import threading
import time
import uuid
from typing import TYPE_CHECKING

import attrs

from .. import hooks
from .._causation import current_frame
from .._delivery import after_failure, bury, dead_letter, run_handler
from .._redact import describe_error, masked_logger
from ..deadletters import DeadLetter
from ..errors import SerializationError, SkipEvent, UnknownEventError
from ..transports._link import FORWARD
from ._rows import first_failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._bus import EventBus
    from .._envelope import Envelope
    from .._handlers import Handler
    from ..transports._link import TransportLink
    from ..typing import OutboxStore
    from ._rows import ClaimedRow

__all__ = ["Relay"]


@attrs.frozen
class _Item:
    row: ClaimedRow
    envelope: Envelope
    handler: Handler


@attrs.define
class _Batch:
    """A claimed batch on its way through the relay: what the worker thread did with it,
    and what is left for the event loop."""

    rows: list[ClaimedRow]
    finished: list[int]
    """Row ids to complete: handled, duplicates, buried."""
    handled: list[_Item] = attrs.Factory(list)
    """Handled (or skipped) on the worker thread."""
    failed: list[tuple[_Item, Exception]] = attrs.Factory(list)
    left: list[_Item] = attrs.Factory(list)
    """Still to run, on the loop: async and connection-taking handlers, and sync ones the
    worker thread did not get to within its time budget."""
    completed: int | None = None
    """Rows the worker thread completed itself (None: completing is left to the loop)."""
    error: Exception | None = None
    """Why the worker thread could not complete the batch."""
    forward: list[ClaimedRow] = attrs.Factory(list)
    """Rows bound for the transport: published, then completed, on the loop."""
    undecodable: list[tuple[ClaimedRow, Exception]] = attrs.Factory(list)
    """Rows whose bytes are not an envelope: buried (as raw dead letters) on the loop."""


def _contention(error: BaseException, outbox: object) -> bool:
    """A lock wait that ran out or a deadlock, not the handler's fault.

    The outbox store may judge its own driver's errors (``is_contention``); SQLite's
    'database is locked' is recognised anywhere in the chain of causes.
    """
    judge = getattr(outbox, "is_contention", None)
    if judge is not None and judge(error):
        return True
    seen: BaseException | None = error
    for _ in range(10):  # a bounded walk: chains can loop
        if seen is None:
            return False
        if isinstance(seen, sqlite3.OperationalError) and "locked" in str(seen):
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None) or seen.__context__
    return False


def _chunks(items: list[_Item], count: int) -> list[list[_Item]]:
    """Split ``items`` into at most ``count`` chunks of nearly equal size, in order."""
    if not items:
        return []
    count = min(count, len(items))
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def _marks(handled: list[_Item]) -> list[tuple[str, uuid.UUID]]:
    """Inbox marks for handled items; connection-taking handlers wrote their own."""
    return [(i.handler.name, i.envelope.id) for i in handled if not i.handler.wants_connection]


logger = masked_logger("eventbus.relay")


def _rows(count: int) -> str:
    return "row" if count == 1 else "rows"


_MISSING_HANDLER_DELAY = 60.0
_STORE_RETRY_DELAY = 60.0
"""Seconds before a row whose dead letter could not be stored is tried again."""

_DUE_MARGIN = 1.0
"""Seconds past its due time (on this process's clock) after which a row this relay put
back, and that a claim did not return, is taken to be another relay's."""

_INLINE_BUDGET = 0.005
"""Seconds of plain sync handlers the claiming worker thread runs itself, one after
another. Quick handlers (the usual case) then cost no handoff to other threads; once a
batch's handlers take longer (they wait on I/O), the rest run on all the worker threads."""


class Relay:
    """Delivers a bus's outbox rows to its durable handlers."""

    def __init__(self, bus: EventBus, outbox: OutboxStore) -> None:
        self._bus = bus
        self._outbox = outbox
        self._batch = outbox.batch
        self._lease = outbox.lease
        self._poll_interval = outbox.poll_interval
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
        wake, loop = self._wake, self._bus._runtime._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(wake.set)

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
        the transport, its async handlers run, completed), the next is claimed and worked
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
                # One trip to a worker thread per batch: claim, decode, the inbox check,
                # the plain sync handlers and (when they all succeeded) the completion.
                try:
                    batch = await self._bus._runtime.run_sync(self._claim_and_work)
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
        listen = getattr(self._outbox, "listen", None)
        if listen is None:
            return None
        try:
            stop: Callable[[], None] | None = await self._bus._runtime.run_sync(listen, self.nudge)
        except Exception:
            logger.warning(
                "the relay cannot listen for commits in other processes; it polls every %ss",
                self._poll_interval,
                exc_info=True,
            )
            return None
        return stop

    async def _finish_guarded(self, batch: _Batch) -> None:
        """Finish a batch; a database error while settling it (a lock held too long, a
        lost connection) leaves its rows leased, to come back when the lease runs out.
        The relay itself must go on."""
        try:
            await self._finish(batch)
        except Exception:
            self._delivered = True
            logger.exception("the relay could not settle a batch; it goes on")
            await asyncio.sleep(self._poll_interval)

    def _claim_and_work(self) -> _Batch | None:
        """On a worker thread: claim a batch and do its thread work; None when nothing
        was claimed (or the claim failed: the next cycle tries again)."""
        started = time.monotonic()
        try:
            rows = self._outbox.claim(owner=self.owner, batch=self._batch, lease=self._lease)
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
            return self._work(rows)
        except BaseException:
            self._in_flight.difference_update(row.id for row in rows)
            raise

    def _work(self, rows: list[ClaimedRow]) -> _Batch:
        """On a worker thread: prepare the rows, run the plain sync handlers, and complete
        the batch when nothing is left for the loop (the usual case)."""
        forward: list[ClaimedRow] = []
        local = rows
        if self._bus._link is not None:
            forward = [row for row in rows if row.destination == FORWARD]
            if forward:
                local = [row for row in rows if row.destination != FORWARD]
        items, finished, undecodable = self._prepare(local)
        fresh = self._unseen(items, finished)
        batch = _Batch(rows, finished, forward=forward, undecodable=undecodable)
        plain = [i for i in fresh if not i.handler.is_async and not i.handler.wants_connection]
        batch.left = [i for i in fresh if i.handler.is_async or i.handler.wants_connection]
        deadline = time.perf_counter() + _INLINE_BUDGET
        for index, item in enumerate(plain):
            if time.perf_counter() > deadline:
                # Slow handlers (waiting on I/O): the rest overlap on the worker threads.
                batch.left.extend(plain[index:])
                break
            error = self._call_sync(item)
            if error is None or isinstance(error, SkipEvent):
                batch.handled.append(item)
                finished.append(item.row.id)
            else:
                batch.failed.append((item, error))
        if not batch.left and not batch.failed and not batch.undecodable and finished:
            try:
                batch.completed = self._outbox.complete(
                    finished, owner=self.owner, processed=_marks(batch.handled)
                )
            except Exception as error:  # raised on the loop, once the hooks are sent
                batch.error = error
        return batch

    def _unseen(self, items: list[_Item], finished: list[int]) -> list[_Item]:
        """The items the inbox does not know yet; the others are finished (delivered before:
        a crash after the handler, or twice in this batch)."""
        keys = [(item.handler.name, item.envelope.id) for item in items]
        asked = [pair for item, pair in zip(items, keys, strict=True) if item.row.seen is None]
        seen = self._outbox.seen_many(asked) if asked else set()
        fresh: list[_Item] = []
        for item, pair in zip(items, keys, strict=True):
            if item.row.seen or pair in seen:
                finished.append(item.row.id)
            else:
                seen.add(pair)
                fresh.append(item)
        return fresh

    async def _finish(self, batch: _Batch) -> None:
        """On the loop: run what the worker thread left, settle failures, complete (unless
        done already), and send the hooks."""
        try:
            link = self._bus._link
            if batch.forward and link is not None:
                await self._forward(link, batch.forward)
            finished = batch.finished
            for row, why in batch.undecodable:
                if await self._bury_undecodable(row, why):
                    finished.append(row.id)
            outcomes: list[tuple[_Item, Exception | None]] = list(batch.failed)
            if batch.left:
                outcomes.extend(await self._run_all(batch.left))
            handled = list(batch.handled)  # their rows are in finished already
            for item, error in outcomes:
                if error is None or isinstance(error, SkipEvent):
                    handled.append(item)
                    finished.append(item.row.id)
                elif await self._failed(item.row, item.handler, item.envelope, error):
                    finished.append(item.row.id)
            for item in handled:  # the handlers returned, whatever becomes of the rows
                hooks._send(
                    hooks.event_handled,
                    self._bus,
                    envelope=item.envelope,
                    handler=item.handler.name,
                )
            if batch.error is not None:
                raise batch.error
            count = batch.completed
            if count is None and finished:
                count = await self._bus._runtime.run_sync(
                    functools.partial(
                        self._outbox.complete,
                        finished,
                        owner=self.owner,
                        processed=_marks(handled),
                    )
                )
            if handled:
                envelopes = tuple(item.envelope for item in handled)
                hooks._send(hooks.outbox_relayed, self._bus, envelopes=envelopes)
            if count is not None and count != len(finished):
                logger.warning(
                    "%d delivered outbox rows were no longer leased to this relay "
                    "(lease ran out); another relay may deliver them again",
                    len(finished) - count,
                )
        finally:
            self._in_flight.difference_update(row.id for row in batch.rows)

    async def _forward(self, link: TransportLink, rows: list[ClaimedRow]) -> None:
        """Publish rows bound for the transport; complete those the broker confirmed."""
        done, envelopes = await link.forward(self._outbox, self.owner, rows)
        if done:
            count = await self._bus._runtime.run_sync(
                functools.partial(self._outbox.complete, done, owner=self.owner)
            )
            if count != len(done):
                logger.warning(
                    "%d forwarded outbox rows were no longer leased to this relay; they may "
                    "be published again (receivers deduplicate by envelope id)",
                    len(done) - count,
                )
        if envelopes:
            hooks._send(hooks.outbox_relayed, self._bus, envelopes=tuple(envelopes))

    def _prepare(
        self, rows: list[ClaimedRow]
    ) -> tuple[list[_Item], list[int], list[tuple[ClaimedRow, Exception]]]:
        """Decode rows and find their handlers (worker thread); returns the items, the
        rows finished already, and the rows that cannot be decoded (to bury)."""
        decode = self._bus.codec.decode
        handlers = self._bus._handlers
        items: list[_Item] = []
        finished: list[int] = []
        undecodable: list[tuple[ClaimedRow, Exception]] = []
        for row in rows:
            try:
                envelope = decode(row.payload)
            except (SerializationError, UnknownEventError) as error:
                undecodable.append((row, error))
                continue
            handler = handlers.get(row.destination)
            if handler is None or handler.delivery != "durable":
                logger.error(
                    "outbox row %d is for durable handler %r, which this bus does not have; "
                    "it waits for a process that does",
                    row.id,
                    row.destination,
                )
                self._reschedule_now(
                    row,
                    f"no durable handler named {row.destination!r} in this process",
                    _MISSING_HANDLER_DELAY,
                    count_attempt=False,
                    retry=False,
                )
                continue
            items.append(_Item(row, envelope, handler))
        return items, finished, undecodable

    async def _run_all(self, items: list[_Item]) -> list[tuple[_Item, Exception | None]]:
        """Run every item's handler; returns each item with its error (or None)."""
        run = self._bus._runtime.run_sync
        plain_sync = [i for i in items if not i.handler.is_async and not i.handler.wants_connection]
        others = [i for i in items if i.handler.is_async or i.handler.wants_connection]
        chunks = _chunks(plain_sync, self._bus._runtime.workers)
        outcomes = await asyncio.gather(
            *(run(self._run_chunk, chunk) for chunk in chunks),
            *(self._run_one(item) for item in others),
        )
        results: list[tuple[_Item, Exception | None]] = []
        for chunk, errors in zip(chunks, outcomes[: len(chunks)], strict=True):
            results.extend(zip(chunk, errors, strict=True))  # type: ignore[arg-type]
        results.extend(zip(others, outcomes[len(chunks) :], strict=True))  # type: ignore[arg-type]
        return results

    def _run_chunk(self, chunk: list[_Item]) -> list[Exception | None]:
        """Sync handlers, one after another on one worker thread."""
        return [self._call_sync(item) for item in chunk]

    def _call_sync(self, item: _Item) -> Exception | None:
        """Run a plain sync handler here, with its envelope as the cause of what it
        publishes; returns its error (or None)."""
        envelope = item.envelope
        token = current_frame.set([envelope.event, None, None, envelope])
        try:
            if item.handler.wants_envelope:
                item.handler.fn(envelope.event, envelope)
            else:
                item.handler.fn(envelope.event)
        except Exception as error:
            return error
        finally:
            current_frame.reset(token)
        return None

    async def _run_one(self, item: _Item) -> Exception | None:
        """Run an async or connection-taking handler through the pipeline's own step (a
        duplicate found by the inbox counts as handled); returns its error (or None)."""
        try:
            await run_handler(self._bus, item.handler, item.envelope)
        except Exception as error:
            return error
        return None

    async def _failed(
        self, row: ClaimedRow, handler: Handler, envelope: Envelope, error: Exception
    ) -> bool:
        """A durable attempt failed: reschedule the row, or bury it; True when buried."""
        if _contention(error, self._outbox):
            # The database was busy, not the handler wrong: try again soon, uncounted.
            hooks._send(
                hooks.handler_failed,
                self._bus,
                envelope=envelope,
                handler=handler.name,
                error=error,
            )
            await self._reschedule(row, describe_error(error), 0.1, count_attempt=False)
            return False
        attempt = row.attempts + 1
        elapsed = max(0.0, time.time() - row.created_at)
        delay = after_failure(self._bus, handler, envelope, error, attempt=attempt, elapsed=elapsed)
        if delay is None:
            try:
                await dead_letter(
                    self._bus,
                    handler,
                    envelope,
                    error,
                    attempts=attempt,
                    first_failed_at=first_failure(row),
                    payload=row.payload,
                )
            except Exception as store_error:
                # Logged by bury(). The row stays, so the letter is not lost: it comes
                # back later and is dead-lettered again once the store takes it.
                text = f"{describe_error(error)} (its dead letter could not be stored: "
                await self._reschedule(
                    row, f"{text}{describe_error(store_error)})", _STORE_RETRY_DELAY
                )
                return False
            return True
        runtime = self._bus._runtime
        if runtime.injected_sleep:
            # Tests: the injected sleep stands for the wait, and the row is due at once.
            await runtime.sleep(delay)
            delay = 0.0
        await self._reschedule(row, describe_error(error), delay)
        return False

    async def _reschedule(
        self, row: ClaimedRow, error: str, delay: float, *, count_attempt: bool = True
    ) -> None:
        await self._bus._runtime.run_sync(
            functools.partial(self._reschedule_now, row, error, delay, count_attempt=count_attempt)
        )

    def _reschedule_now(
        self,
        row: ClaimedRow,
        error: str,
        delay: float,
        *,
        count_attempt: bool = True,
        retry: bool = True,
    ) -> None:
        """Put ``row`` back for a later attempt; ``retry``: this relay will make that
        attempt (so drain waits for it), not a process that has the handler."""
        attempts = row.attempts + 1 if count_attempt else row.attempts
        kept = self._outbox.reschedule(
            row.id, owner=self.owner, attempts=attempts, delay=delay, error=error
        )
        if not kept:
            logger.warning("outbox row %d was taken over by another relay mid-delivery", row.id)
        elif retry:
            self._waits(row, delay)

    async def _bury_undecodable(self, row: ClaimedRow, error: Exception) -> bool:
        """A row whose bytes cannot become an envelope: keep it as a dead letter, raw.
        Whether it was kept (if not, the row waits and is tried again)."""
        letter = DeadLetter.raw(
            payload=row.payload,
            envelope_id=row.envelope_id,
            event_name=row.name,
            handler=row.destination,
            error=error,
            attempts=row.attempts + 1,
            first_failed_at=first_failure(row),
        )
        try:
            await bury(self._bus, letter)
        except Exception as store_error:
            await self._reschedule(
                row,
                f"cannot be decoded, and its dead letter could not be stored: "
                f"{describe_error(store_error)}",
                _STORE_RETRY_DELAY,
            )
            return False
        return True

    async def _renew_leases(self) -> None:
        """Keep the leases of rows in delivery alive, so a slow handler is not taken over."""
        while True:
            await asyncio.sleep(self._lease / 3)
            in_flight = list(self._in_flight)
            if in_flight:
                try:
                    await self._bus._runtime.run_sync(
                        functools.partial(
                            self._outbox.renew, in_flight, owner=self.owner, lease=self._lease
                        )
                    )
                except Exception:
                    logger.exception("the relay could not renew its leases")
