"""The relay's sink for this process's durable handlers: outbox rows in, handlers run.

Each row is one envelope for one handler (its ``destination``). On the worker thread that
claimed the batch (``take``): decode, the inbox check (answered by the claim itself where
the store can), and plain sync handlers for up to ``_INLINE_BUDGET``; when nothing is left
the relay completes the batch on that same thread, so a batch of quick handlers costs one
trip there. Only what needs the loop goes back to it (``finish``): async and
connection-taking handlers, slow sync handlers (spread over all the worker threads),
failures and the hooks.

Durable handlers get an inbox keyed by (handler, envelope id): a row delivered again
after a crash is recognised and not handled twice. A handler that takes a connection
gets one with an open transaction in which its inbox mark is written too, so its effects
and the mark commit together: exactly once. A failed handler's row is rescheduled by its
retry policy (the attempts are the row's, so they survive a restart) or, once the policy
gives up, dead-lettered with the row's own bytes.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import attrs

from .. import hooks
from .._delivery import after_failure, bury, call, dead_letter, run_handler
from .._records import DeadLetter, first_failure
from .._redact import describe_error, masked_logger
from ..errors import SerializationError, SkipEvent, UnknownEventError
from ..typing import SupportsContention
from ._relay import Batch, Retry

if TYPE_CHECKING:
    from .._context import Context
    from .._envelope import Envelope
    from .._handlers import Handler
    from .._records import ClaimedRow
    from ..typing import Inbox
else:  # _Item's fields are read at run time by NamedTuple
    ClaimedRow = Envelope = Handler = Any

__all__ = ["LocalHandlers", "contention"]

logger = masked_logger("eventbus.relay")

_MISSING_HANDLER_DELAY = 60.0
_STORE_RETRY_DELAY = 60.0
"""Seconds before a row whose dead letter could not be stored is tried again."""
_CONTENTION_DELAY = 0.1

RUN_LENGTH = 8
"""Rows of one key a claim may give this process's handlers at once (where the store
claims runs): they run in order, the rest of a run held back after a failure. Short on
purpose: a claim finds every chosen head's whole run before it cuts the batch, and
checks each row of a run against the rows before it, so its cost grows with the square
of the run. Measured on SQLite with 50 hot keys (batches of 200): runs of 100 cost 65,
233 and 359 µs a row at 2k, 8k and 32k rows; a few rows per key already fill a batch."""

_INLINE_BUDGET = 0.005
"""Seconds of plain sync handlers the claiming worker thread runs itself, one after
another. Quick handlers (the usual case) then cost no handoff to other threads; once a
batch's handlers take longer (they wait on I/O), the rest run on all the worker threads."""


class _Item(NamedTuple):
    row: ClaimedRow
    envelope: Envelope
    handler: Handler


@attrs.define(eq=False)
class _LocalBatch(Batch):
    """A batch for this process's handlers: what the worker thread did with it, and what
    is left for the loop."""

    handled: list[_Item] = attrs.Factory(list)
    """Handled (or skipped): their hooks are sent on the loop."""
    failed: list[tuple[_Item, Exception]] = attrs.Factory(list)
    waiting: list[_Item] = attrs.Factory(list)
    """Still to run, on the loop: async and connection-taking handlers, and sync ones the
    worker thread did not get to within its time budget."""
    undecodable: list[tuple[ClaimedRow, Exception]] = attrs.Factory(list)
    """Rows whose bytes are not an envelope: buried (as raw dead letters) on the loop."""


def contention(error: BaseException, store: object) -> bool:
    """A lock wait that ran out or a deadlock, not the handler's fault.

    The store may judge its own driver's errors (``SupportsContention``); SQLite's
    'database is locked' is recognised anywhere in the chain of causes.
    """
    if isinstance(store, SupportsContention) and store.is_contention(error):
        return True
    seen: BaseException | None = error
    for _ in range(10):  # a bounded walk: chains can loop
        if seen is None:
            return False
        if isinstance(seen, sqlite3.OperationalError) and "locked" in str(seen):
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None) or seen.__context__
    return False


def _chunks(items: list[_T], count: int) -> list[list[_T]]:
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


_HELD_BACK = "held back: an earlier outbox row of its key was not delivered yet"


class _HeldBack:
    """The outcome of a row held back behind a failed earlier row of its key."""


_HELD = _HeldBack()
_Outcome = Exception | None | _HeldBack
_T = TypeVar("_T")


def _chain(row: ClaimedRow) -> object:
    """What a row's order is kept within: its (destination, key); a row without a key is
    ordered with nothing."""
    key = row[4]
    return row[0] if key is None else (row[3], key)


def _held_back(row: ClaimedRow) -> Retry:
    """A row of a run whose earlier row was not delivered: put back at once, its attempt
    uncounted. The claim invariant keeps it unclaimable until the earlier row is gone."""
    return Retry(row, _HELD_BACK, 0.0, count_attempt=False)


def _marks(handled: list[_Item]) -> list[tuple[str, uuid.UUID]]:
    """Inbox marks for handled items; connection-taking handlers wrote their own."""
    return [(i.handler.name, i.envelope.id) for i in handled if not i.handler.wants_connection]


def _plain(handler: Handler) -> bool:
    """A handler a worker thread can simply call: sync, with no transaction of its own."""
    return not handler.is_async and not handler.wants_connection


class LocalHandlers:
    """Delivers outbox rows to this process's durable handlers (a relay's sink).

    ``store`` is the outbox the rows come from, as the handlers' inbox (and the judge of
    its own lock waits, ``SupportsContention``).
    """

    per_key = RUN_LENGTH

    def __init__(self, context: Context, store: Inbox) -> None:
        self._context = context
        self._store = store

    # -- on the worker thread that claimed the batch -----------------------------------

    def take(self, rows: list[ClaimedRow]) -> _LocalBatch:
        """Prepare the rows, and run the plain sync handlers within the time budget.

        Rows come in id order; a store that claims runs (``SupportsClaimRuns``) may give
        several of one key, which run one after another: once a row of a key failed
        here, the key's later rows are held back (put back uncounted; the claim
        invariant keeps them until the failed row is gone), and once one is left for
        the loop, its later rows follow it there."""
        batch = _LocalBatch(rows)
        blocks: dict[object, int] = {}
        items = self._prepare(rows, batch, blocks)
        fresh = self._unseen(items, batch.finished)
        deferred: set[object] = set()
        waiting = batch.waiting
        deadline = time.perf_counter() + _INLINE_BUDGET
        for item in fresh:
            row = item.row
            if blocks or deferred:
                chain = _chain(row)
                first = blocks.get(chain)
                if first is not None and row[0] > first:
                    batch.retries.append(_held_back(row))
                    continue
                if chain in deferred:
                    waiting.append(item)
                    continue
            handler = item.handler
            if (
                handler.is_async
                or handler.connection_type is not None
                or (time.perf_counter() > deadline)
            ):
                # Async, connection-taking, or past the budget (slow handlers waiting on
                # I/O): on the loop, where the rest overlap on the worker threads.
                waiting.append(item)
                deferred.add(_chain(row))
                continue
            error = _call_plain(item)
            if error is None or isinstance(error, SkipEvent):
                batch.handled.append(item)
                batch.finished.append(row[0])
            else:
                batch.failed.append((item, error))
                blocks.setdefault(_chain(row), row[0])
        batch.processed = _marks(batch.handled)
        batch.left = bool(batch.waiting or batch.failed or batch.undecodable)
        return batch

    def _prepare(
        self, rows: list[ClaimedRow], batch: _LocalBatch, blocks: dict[object, int]
    ) -> list[_Item]:
        """Decode rows and find their handlers: the items to deliver. A row that cannot
        be decoded is left to bury; one for a handler this process lacks waits. Either
        blocks its key's later rows (``blocks``: the chain's first such row id)."""
        decode = self._context.codec.decode
        handlers = self._context.handlers
        items: list[_Item] = []
        for row in rows:
            try:
                envelope = decode(row.payload)
            except (SerializationError, UnknownEventError) as error:
                batch.undecodable.append((row, error))
                blocks.setdefault(_chain(row), row[0])
                continue
            handler = handlers.get(row.destination)
            if handler is None or handler.delivery != "durable":
                logger.error(
                    "outbox row %d is for durable handler %r, which this bus does not have; "
                    "it waits for a process that does",
                    row.id,
                    row.destination,
                )
                batch.retries.append(
                    Retry(
                        row,
                        f"no durable handler named {row.destination!r} in this process",
                        _MISSING_HANDLER_DELAY,
                        count_attempt=False,
                        waited=False,
                    )
                )
                blocks.setdefault(_chain(row), row[0])
                continue
            items.append(_Item(row, envelope, handler))
        return items

    def _unseen(self, items: list[_Item], finished: list[int]) -> list[_Item]:
        """The items the inbox does not know yet; the others are finished (delivered before:
        a crash after the handler, or twice in this batch)."""
        asked = [(item.handler.name, item.envelope.id) for item in items if item.row[9] is None]
        known = self._store.seen_many(asked) if asked else set()
        # A row's destination is its handler's name; its envelope id as the store's text
        # (hashed once, unlike a UUID) tells rows of one envelope apart.
        taken: set[tuple[str, str]] = set()
        fresh: list[_Item] = []
        for item in items:
            row = item.row
            pair = (row[3], row.envelope_text)
            if (
                row[9]
                or pair in taken
                or (row[9] is None and (item.handler.name, item.envelope.id) in known)
            ):
                finished.append(row[0])
            else:
                taken.add(pair)
                fresh.append(item)
        return fresh

    # -- on the loop ---------------------------------------------------------------------

    async def finish(self, batch: Batch) -> None:
        """Run what the worker thread left, settle failures, and send ``event_handled``
        for every handler that returned (before the completion: they did return, whatever
        becomes of the rows)."""
        assert isinstance(batch, _LocalBatch)
        for row, why in batch.undecodable:
            if await self._bury_undecodable(row, why, batch):
                batch.finished.append(row.id)
        outcomes: list[tuple[_Item, _Outcome]] = list(batch.failed)
        if batch.waiting:
            outcomes.extend(await self._run_all(batch.waiting))
        handled: list[_Item] = []
        for item, error in outcomes:
            if error is _HELD:
                batch.retries.append(_held_back(item.row))
            elif error is None or isinstance(error, SkipEvent):
                handled.append(item)
                batch.finished.append(item.row.id)
            elif await self._failed(item, error, batch):  # type: ignore[arg-type]
                batch.finished.append(item.row.id)
        batch.handled.extend(handled)
        batch.processed.extend(_marks(handled))
        sender = self._context.sender
        for item in batch.handled:
            hooks._send(
                hooks.event_handled, sender, envelope=item.envelope, handler=item.handler.name
            )

    def relayed(self, batch: Batch) -> None:
        """The batch's rows are completed: ``outbox_relayed`` with the handled envelopes."""
        assert isinstance(batch, _LocalBatch)
        if batch.handled:
            envelopes = tuple(item.envelope for item in batch.handled)
            hooks._send(hooks.outbox_relayed, self._context.sender, envelopes=envelopes)

    async def _run_all(self, items: list[_Item]) -> list[tuple[_Item, _Outcome]]:
        """Run every item's handler; returns each item with its error (or None, or
        ``_HELD`` for one held back behind a failed earlier row of its key). The rows of
        one key (a run) run one after another; different keys overlap."""
        runtime = self._context.runtime
        chains: dict[object, list[_Item]] = {}
        for item in items:
            chains.setdefault(_chain(item.row), []).append(item)
        plain = [chain for chain in chains.values() if _plain(chain[0].handler)]
        others = [chain for chain in chains.values() if not _plain(chain[0].handler)]
        chunks = _chunks(plain, runtime.workers)
        outcomes = await asyncio.gather(
            *(runtime.run_sync(_run_chunk, chunk) for chunk in chunks),
            *(self._run_chain(chain) for chain in others),
        )
        return [pair for outcome in outcomes for pair in outcome]

    async def _run_chain(self, chain: list[_Item]) -> list[tuple[_Item, _Outcome]]:
        """Run async or connection-taking handlers through the pipeline's own step (a
        duplicate found by the inbox counts as handled), one row after another, holding
        back the rows after the first that fails."""
        results: list[tuple[_Item, _Outcome]] = []
        for index, item in enumerate(chain):
            try:
                await run_handler(self._context, item.handler, item.envelope)
            except SkipEvent as error:
                results.append((item, error))
            except Exception as error:
                results.append((item, error))
                results.extend((held, _HELD) for held in chain[index + 1 :])
                break
            else:
                results.append((item, None))
        return results

    async def _failed(self, item: _Item, error: Exception, batch: Batch) -> bool:
        """A durable attempt failed: reschedule the row, or bury it; True when buried."""
        row, handler, envelope = item.row, item.handler, item.envelope
        context = self._context
        if contention(error, self._store):
            # The database was busy, not the handler wrong: try again soon, uncounted.
            hooks._send(
                hooks.handler_failed,
                context.sender,
                envelope=envelope,
                handler=handler.name,
                error=error,
            )
            batch.retries.append(
                Retry(row, describe_error(error), _CONTENTION_DELAY, count_attempt=False)
            )
            return False
        # The attempts are the row's: a durable retry survives a restart of this process.
        attempt = row.attempts + 1
        elapsed = max(0.0, time.time() - row.created_at)
        policy = handler.retry or context.retry
        delay = after_failure(
            context.sender, policy, handler, envelope, error, attempt=attempt, elapsed=elapsed
        )
        if delay is None:
            try:
                await dead_letter(
                    context,
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
                batch.retries.append(
                    Retry(row, f"{text}{describe_error(store_error)})", _STORE_RETRY_DELAY)
                )
                return False
            return True
        runtime = context.runtime
        if runtime.injected_sleep:
            # Tests: the injected sleep stands for the wait, and the row is due at once.
            await runtime.sleep(delay)
            delay = 0.0
        batch.retries.append(Retry(row, describe_error(error), delay))
        return False

    async def _bury_undecodable(self, row: ClaimedRow, error: Exception, batch: Batch) -> bool:
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
            await bury(self._context, letter)
        except Exception as store_error:
            batch.retries.append(
                Retry(
                    row,
                    f"cannot be decoded, and its dead letter could not be stored: "
                    f"{describe_error(store_error)}",
                    _STORE_RETRY_DELAY,
                )
            )
            return False
        return True


def _run_chunk(chains: list[list[_Item]]) -> list[tuple[_Item, _Outcome]]:
    """Sync handlers, one after another on one worker thread; in each chain (a run of one
    key) the rows after the first that fails are held back."""
    results: list[tuple[_Item, _Outcome]] = []
    for chain in chains:
        for index, item in enumerate(chain):
            error = _call_plain(item)
            results.append((item, error))
            if error is not None and not isinstance(error, SkipEvent):
                results.extend((held, _HELD) for held in chain[index + 1 :])
                break
    return results


def _call_plain(item: _Item) -> Exception | None:
    """Run a plain sync handler here; returns its error (or None)."""
    try:
        call(item.handler, item.envelope)
    except Exception as error:
        return error
    return None
