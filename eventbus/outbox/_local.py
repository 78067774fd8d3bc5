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
from typing import TYPE_CHECKING

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

__all__ = ["LocalHandlers", "contention"]

logger = masked_logger("eventbus.relay")

_MISSING_HANDLER_DELAY = 60.0
_STORE_RETRY_DELAY = 60.0
"""Seconds before a row whose dead letter could not be stored is tried again."""
_CONTENTION_DELAY = 0.1

_INLINE_BUDGET = 0.005
"""Seconds of plain sync handlers the claiming worker thread runs itself, one after
another. Quick handlers (the usual case) then cost no handoff to other threads; once a
batch's handlers take longer (they wait on I/O), the rest run on all the worker threads."""


@attrs.frozen
class _Item:
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


def _plain(handler: Handler) -> bool:
    """A handler a worker thread can simply call: sync, with no transaction of its own."""
    return not handler.is_async and not handler.wants_connection


class LocalHandlers:
    """Delivers outbox rows to this process's durable handlers (a relay's sink).

    ``store`` is the outbox the rows come from, as the handlers' inbox (and the judge of
    its own lock waits, ``SupportsContention``).
    """

    def __init__(self, context: Context, store: Inbox) -> None:
        self._context = context
        self._store = store

    # -- on the worker thread that claimed the batch -----------------------------------

    def take(self, rows: list[ClaimedRow]) -> _LocalBatch:
        """Prepare the rows, and run the plain sync handlers within the time budget."""
        batch = _LocalBatch(rows)
        items = self._prepare(rows, batch)
        fresh = self._unseen(items, batch.finished)
        plain = [item for item in fresh if _plain(item.handler)]
        batch.waiting = [item for item in fresh if not _plain(item.handler)]
        deadline = time.perf_counter() + _INLINE_BUDGET
        for index, item in enumerate(plain):
            if time.perf_counter() > deadline:
                # Slow handlers (waiting on I/O): the rest overlap on the worker threads.
                batch.waiting.extend(plain[index:])
                break
            error = _call_plain(item)
            if error is None or isinstance(error, SkipEvent):
                batch.handled.append(item)
                batch.finished.append(item.row.id)
            else:
                batch.failed.append((item, error))
        batch.processed = _marks(batch.handled)
        batch.left = bool(batch.waiting or batch.failed or batch.undecodable)
        return batch

    def _prepare(self, rows: list[ClaimedRow], batch: _LocalBatch) -> list[_Item]:
        """Decode rows and find their handlers: the items to deliver. A row that cannot
        be decoded is left to bury; one for a handler this process lacks waits."""
        decode = self._context.codec.decode
        handlers = self._context.handlers
        items: list[_Item] = []
        for row in rows:
            try:
                envelope = decode(row.payload)
            except (SerializationError, UnknownEventError) as error:
                batch.undecodable.append((row, error))
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
                continue
            items.append(_Item(row, envelope, handler))
        return items

    def _unseen(self, items: list[_Item], finished: list[int]) -> list[_Item]:
        """The items the inbox does not know yet; the others are finished (delivered before:
        a crash after the handler, or twice in this batch)."""
        keys = [(item.handler.name, item.envelope.id) for item in items]
        asked = [pair for item, pair in zip(items, keys, strict=True) if item.row.seen is None]
        seen = self._store.seen_many(asked) if asked else set()
        fresh: list[_Item] = []
        for item, pair in zip(items, keys, strict=True):
            if item.row.seen or pair in seen:
                finished.append(item.row.id)
            else:
                seen.add(pair)
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
        outcomes: list[tuple[_Item, Exception | None]] = list(batch.failed)
        if batch.waiting:
            outcomes.extend(await self._run_all(batch.waiting))
        handled: list[_Item] = []
        for item, error in outcomes:
            if error is None or isinstance(error, SkipEvent):
                handled.append(item)
                batch.finished.append(item.row.id)
            elif await self._failed(item, error, batch):
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

    async def _run_all(self, items: list[_Item]) -> list[tuple[_Item, Exception | None]]:
        """Run every item's handler; returns each item with its error (or None)."""
        runtime = self._context.runtime
        plain = [item for item in items if _plain(item.handler)]
        others = [item for item in items if not _plain(item.handler)]
        chunks = _chunks(plain, runtime.workers)
        outcomes = await asyncio.gather(
            *(runtime.run_sync(_run_chunk, chunk) for chunk in chunks),
            *(self._run_one(item) for item in others),
        )
        results: list[tuple[_Item, Exception | None]] = []
        for chunk, errors in zip(chunks, outcomes[: len(chunks)], strict=True):
            results.extend(zip(chunk, errors, strict=True))  # type: ignore[arg-type]
        results.extend(zip(others, outcomes[len(chunks) :], strict=True))  # type: ignore[arg-type]
        return results

    async def _run_one(self, item: _Item) -> Exception | None:
        """Run an async or connection-taking handler through the pipeline's own step (a
        duplicate found by the inbox counts as handled); returns its error (or None)."""
        try:
            await run_handler(self._context, item.handler, item.envelope)
        except Exception as error:
            return error
        return None

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


def _run_chunk(chunk: list[_Item]) -> list[Exception | None]:
    """Sync handlers, one after another on one worker thread."""
    return [_call_plain(item) for item in chunk]


def _call_plain(item: _Item) -> Exception | None:
    """Run a plain sync handler here; returns its error (or None)."""
    try:
        call(item.handler, item.envelope)
    except Exception as error:
        return error
    return None
