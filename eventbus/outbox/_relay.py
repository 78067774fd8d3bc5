"""The relay: moves committed outbox rows to their durable handlers, at least once.

It claims a batch in one short statement (a lease stamped by the database clock),
delivers outside any transaction, then completes or reschedules each row in another
short statement fenced by its lease owner. Rows are claimed at most one per key, so a
key's events reach its handler in outbox order even across retries and relays. A commit
in this process wakes it at once; polling every ``poll_interval`` is the safety net that
makes it correct (a row committed by another process, a lease that ran out).

Durable handlers get an inbox keyed by (handler, envelope id): a row delivered again
after a crash is recognised and not handled twice. A handler that takes a
``sqlite3.Connection`` gets one with an open transaction in which its inbox mark is
written too, so its effects and the mark commit together: exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import hooks
from .._delivery import Attempted, Outcome, dead_letter
from ..errors import RejectEvent, SerializationError, SkipEvent, UnknownEventError

if TYPE_CHECKING:
    from .._bus import EventBus
    from .._envelope import Envelope
    from .._handlers import Handler
    from ..typing import OutboxStore
    from ._rows import ClaimedRow

__all__ = ["Relay"]

logger = logging.getLogger("eventbus.relay")

_MISSING_HANDLER_DELAY = 60.0


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
        self._stopping = False
        self._in_flight: set[int] = set()

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

    async def settle(self) -> bool:
        """Wake the relay and wait until a claim finds nothing due.

        Returns whether it delivered anything meanwhile (then callers look again, as the
        deliveries may have published more).
        """
        self._delivered = False
        self._quiet.clear()
        self._wake.set()
        await self._quiet.wait()
        return self._delivered

    async def run(self) -> None:
        """Claim and deliver until stopped."""
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    rows = await self._bus._runtime.run_sync(
                        lambda: self._outbox.claim(
                            owner=self.owner, batch=self._batch, lease=self._lease
                        )
                    )
                except Exception:
                    logger.exception("the relay could not claim outbox rows; trying again")
                    rows = []
                if rows:
                    self._delivered = True
                    await self.deliver(rows)
                    continue
                self._quiet.set()
                try:
                    async with asyncio.timeout(self._poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            renewer.cancel()
            self._quiet.set()  # nobody waits for a relay that has stopped

    async def deliver(self, rows: list[ClaimedRow]) -> None:
        """Deliver claimed rows concurrently (at most one per key), then settle them."""
        self._in_flight.update(row.id for row in rows)
        try:
            done = await asyncio.gather(*(self._deliver_one(row) for row in rows))
        finally:
            self._in_flight.difference_update(row.id for row in rows)
        completed = [row.id for row, finished in zip(rows, done, strict=True) if finished]
        if completed:
            count = await self._bus._runtime.run_sync(
                lambda: self._outbox.complete(completed, owner=self.owner)
            )
            if count != len(completed):
                logger.warning(
                    "%d delivered outbox rows were no longer leased to this relay "
                    "(lease ran out); another relay may deliver them again",
                    len(completed) - count,
                )

    async def _deliver_one(self, row: ClaimedRow) -> bool:
        """Deliver one row; True when it is finished (delivered, duplicate, or buried)."""
        bus = self._bus
        try:
            envelope = bus.codec.decode(row.payload)
        except (SerializationError, UnknownEventError) as error:
            logger.error(  # noqa: TRY400 - the error is the message; its trace says nothing
                "outbox row %d (%s) cannot be decoded: %s", row.id, row.name, error
            )
            await self._bury_undecodable(row, error)
            return True
        handler = bus._handlers.get(row.destination)
        if handler is None or handler.delivery != "durable":
            await self._reschedule(
                row,
                f"no durable handler named {row.destination!r} in this process",
                _MISSING_HANDLER_DELAY,
                count_attempt=False,
            )
            logger.error(
                "outbox row %d is for durable handler %r, which this bus does not have; "
                "it waits for a process that does",
                row.id,
                row.destination,
            )
            return False
        run = bus._runtime.run_sync
        if await run(lambda: self._outbox.seen(handler.name, envelope.id)):
            return True  # delivered before a crash: the inbox remembers
        try:
            await self._call(handler, envelope)
        except SkipEvent:
            pass
        except Exception as error:
            return await self._failed(row, handler, envelope, error)
        hooks._send(hooks.event_handled, bus, envelope=envelope, handler=handler.name)
        return True

    async def _call(self, handler: Handler, envelope: Envelope) -> None:
        bus = self._bus
        if handler.wants_connection:
            await bus._runtime.run_sync(self._call_in_transaction, handler, envelope)
            return
        from .._delivery import _call  # noqa: PLC0415 - shares the pipeline's call

        await _call(bus, handler, envelope)
        await bus._runtime.run_sync(lambda: self._outbox.mark(handler.name, envelope.id))

    def _call_in_transaction(self, handler: Handler, envelope: Envelope) -> None:
        """Run a connection-taking handler with its inbox mark in its own transaction."""
        from .._causation import current_frame  # noqa: PLC0415

        token = current_frame.set([envelope.event, None, None, envelope])
        try:
            with self._outbox.handler_transaction() as connection:
                if not self._outbox.mark(handler.name, envelope.id, connection):
                    return  # a duplicate: done before, with its effects, in one commit
                args: tuple[Any, ...] = (envelope.event,)
                if handler.wants_envelope:
                    args = (*args, envelope)
                handler.fn(*args, connection)
        finally:
            current_frame.reset(token)

    async def _failed(
        self, row: ClaimedRow, handler: Handler, envelope: Envelope, error: Exception
    ) -> bool:
        bus = self._bus
        hooks._send(hooks.handler_failed, bus, envelope=envelope, handler=handler.name, error=error)
        attempt = row.attempts + 1
        policy = handler.retry or bus.retry_policy
        delay = None
        if not isinstance(error, RejectEvent):
            delay = policy.next_delay(
                attempt=attempt, error=error, elapsed=max(0.0, time.time() - row.created_at)
            )
        if delay is None:
            result = Attempted(Outcome.FAILED, attempt, error, None)
            await dead_letter(bus, handler, envelope, error, result)
            return True
        hooks._send(
            hooks.handler_retrying,
            bus,
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempt=attempt,
            delay=delay,
        )
        await self._reschedule(row, f"{type(error).__name__}: {error}", delay)
        return False

    async def _reschedule(
        self, row: ClaimedRow, error: str, delay: float, *, count_attempt: bool = True
    ) -> None:
        attempts = row.attempts + 1 if count_attempt else row.attempts
        kept = await self._bus._runtime.run_sync(
            lambda: self._outbox.reschedule(
                row.id, owner=self.owner, attempts=attempts, delay=delay, error=error
            )
        )
        if not kept:
            logger.warning("outbox row %d was taken over by another relay mid-delivery", row.id)

    async def _bury_undecodable(self, row: ClaimedRow, error: Exception) -> None:
        """A row whose bytes cannot become an envelope: keep it as a dead letter, raw."""
        from ..deadletters import DeadLetter  # noqa: PLC0415

        now = datetime.now(UTC)
        letter = DeadLetter(
            id=uuid.uuid4(),
            envelope_id=row.envelope_id,
            event_name=row.name,
            handler=row.destination,
            error_type=f"{type(error).__module__}.{type(error).__qualname__}",
            message=str(error)[:2000],
            traceback="",
            attempts=row.attempts + 1,
            first_failed_at=now,
            last_failed_at=now,
            payload=row.payload,
        )
        await self._bus._runtime.run_sync(self._bus.dead_letters.add, letter)

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
