"""The worker: consumes a transport and runs this bus's durable handlers, then acks.

For every message: past ``max_deliveries`` it is dead-lettered (it kept killing its
consumer); bytes that are not a registered envelope are dead-lettered raw, once; else each
durable handler of the event's class runs through the same pipeline as in-process
deliveries (retry policy, dead letters, hooks), skipping the handlers whose inbox says
they ran already, and the message is acknowledged only when every handler is done with it.
A worker killed midway leaves the message unacknowledged: the broker delivers it again,
and the inbox keeps the handlers that had finished from running twice.

Messages of one key are handled one after another, in the order received; other keys run
concurrently, at most ``concurrency`` messages at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import uuid
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

from .._delivery import Outcome, attempt, bury, dead_letter
from .._envelope import uuid7
from .._records import WORKER_HANDLER, DeadLetter
from .._redact import describe_error, masked_logger
from .._retry import Backoff
from ..deadletters._peek import peek
from ..errors import SerializationError, UnknownEventError
from ..typing import SupportsPending, SupportsRedeliveryTimeout, SupportsTouch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from .._context import Context
    from .._envelope import Envelope
    from .._handlers import Handler
    from ..typing import Inbox, Received, Transport

__all__ = ["MemoryInbox", "Worker"]

logger = masked_logger("eventbus.worker")

_MAX_KEPT_PAYLOAD = 1024 * 1024
_RESUBSCRIBE = Backoff(first=0.1, cap=5.0)
"""The waits before subscribing again after the subscription failed."""


class MemoryInbox:
    """Handlers' processed envelope ids, for a worker whose bus has no outbox database.

    Bounded, and lost with the process: with a database (``EventBus(outbox=...)``) the
    inbox is a table and survives restarts.
    """

    def __init__(self, size: int = 100_000) -> None:
        self._seen: collections.OrderedDict[tuple[str, uuid.UUID], None] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        with self._lock:
            return (handler, envelope_id) in self._seen

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        with self._lock:
            return {pair for pair in pairs if pair in self._seen}

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        del connection
        with self._lock:
            pair = (handler, envelope_id)
            if pair in self._seen:
                return False
            self._seen[pair] = None
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True


class Worker:
    """Runs the durable handlers of ``context`` on what ``transport`` delivers to
    ``group``, skipping those ``inbox`` says ran already."""

    def __init__(
        self,
        context: Context,
        transport: Transport,
        inbox: Inbox,
        *,
        group: str,
        max_deliveries: int,
        concurrency: int = 64,
    ) -> None:
        self._context = context
        self._transport = transport
        self.group = group
        self._max_deliveries = max_deliveries
        self._slots = asyncio.Semaphore(concurrency)
        self._inbox = inbox
        # What the transport offers beyond the protocol, looked at once: a transport that
        # redelivers after a timeout has its messages touched every third of it; one that
        # counts what waits for a group lets drain wait for that too.
        timeout = (
            transport.redelivery_timeout
            if isinstance(transport, SupportsRedeliveryTimeout)
            else None
        )
        self._touch_every = timeout / 3 if timeout else None
        self._touches: dict[type[Any], bool] = {}
        self._pending: Callable[[str], int] | None = (
            transport.pending if isinstance(transport, SupportsPending) else None
        )
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._consuming: asyncio.Task[None] | None = None
        self._stopping = False
        self.handled = 0
        """Messages settled so far (acked after handling or dead-lettering)."""

    def topics(self) -> list[str]:
        """Every registered event name whose class one of the durable handlers takes."""
        return self._context.handlers.durable_topics(self._context.registry)

    async def run(self) -> None:
        """Consume until stopped; then let the messages in hand finish."""
        topics = self.topics()
        if not topics:
            logger.info("the worker has no durable handlers to feed; it does not subscribe")
            return
        self._consuming = asyncio.current_task()
        failures = 0
        try:
            while not self._stopping:
                iterator = self._transport.subscribe(topics, group=self.group)
                try:
                    await self._consume(iterator)
                except asyncio.CancelledError:
                    if not self._stopping:
                        raise
                except Exception:
                    delay = _RESUBSCRIBE.delay(failures)
                    failures += 1
                    logger.warning(
                        "the worker's subscription failed; subscribing again in %.1f s",
                        delay,
                        exc_info=True,
                    )
                    await asyncio.sleep(delay)
                else:
                    failures = 0
                finally:
                    await self._finish_in_flight()
                    # Closing the subscription hands back what it held unacknowledged:
                    # the async generators transports write close; any other iterator
                    # is let go.
                    if isinstance(iterator, AsyncGenerator):
                        with contextlib.suppress(Exception):
                            await iterator.aclose()
        finally:
            self._consuming = None

    async def _consume(self, iterator: AsyncIterator[Received]) -> None:
        async for received in iterator:
            await self._slots.acquire()
            envelope = await self._decode(received)
            key = envelope.key if envelope is not None else None
            previous = self._tails.get(key) if key is not None else None
            task = asyncio.create_task(self._handle(received, envelope, previous))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            if key is not None:
                self._tails[key] = task
                task.add_done_callback(functools.partial(self._forget_tail, key))

    def _forget_tail(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _decode(self, received: Received) -> Envelope | None:
        try:
            return self._context.codec.decode(received.body)
        except (SerializationError, UnknownEventError):
            return None

    async def _handle(
        self, received: Received, envelope: Envelope | None, previous: asyncio.Task[None] | None
    ) -> None:
        try:
            if previous is not None:
                # The key's earlier message first, however it ends (wait() raises nothing
                # of the previous task's, while a cancellation of this one still arrives).
                await asyncio.wait([previous])
            if received.delivery_count > self._max_deliveries:
                await self._bury(
                    received,
                    envelope,
                    f"delivered {received.delivery_count} times without an acknowledgement "
                    f"(max_deliveries={self._max_deliveries}): its consumer died each time",
                )
            elif envelope is None:
                await self._bury(received, None, self._why_undecodable(received))
            else:
                touching = self._keep_alive(received)
                try:
                    await self._run_handlers(envelope)
                finally:
                    if touching is not None:
                        touching.cancel()
            await received.ack()
            self.handled += 1
        except asyncio.CancelledError:
            raise  # stopping: not acknowledged, so it is delivered again
        except Exception:
            logger.exception(
                "the worker could not settle message %s on %s; it will be delivered again",
                received.message_id,
                received.topic,
            )
            with contextlib.suppress(Exception):
                await received.nack()
        finally:
            self._slots.release()

    def _keep_alive(self, received: Received) -> asyncio.Task[None] | None:
        """While handlers run, tell the broker the message is still in hand, so a slow
        handler does not get it redelivered to another consumer meanwhile (on transports
        that redeliver after a timeout: Redis ``claim_idle``, NATS ``ack_wait``)."""
        every = self._touch_every
        if every is None or not self._touches_messages(received):
            return None
        touch = cast("SupportsTouch", received).touch

        async def keep_touching() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await touch()
                except Exception:
                    logger.debug("could not touch message %s", received.message_id, exc_info=True)

        return asyncio.create_task(keep_touching())

    def _touches_messages(self, received: Received) -> bool:
        """Whether messages of this kind offer ``touch`` (asked once per class: an
        isinstance against a runtime protocol is too slow for every message)."""
        kind = type(received)
        touches = self._touches.get(kind)
        if touches is None:
            touches = self._touches[kind] = isinstance(received, SupportsTouch)
        return touches

    def _why_undecodable(self, received: Received) -> str:
        try:
            self._context.codec.decode(received.body)
        except (SerializationError, UnknownEventError) as error:
            return describe_error(error)
        return "not an envelope"  # pragma: no cover - decode failed a moment ago

    async def _run_handlers(self, envelope: Envelope) -> None:
        handlers = self._context.handlers.durable_for(type(envelope.event))
        if not handlers:
            return
        run = self._context.runtime.run_sync
        pairs = [(handler.name, envelope.id) for handler in handlers]
        seen = await run(self._inbox.seen_many, pairs)
        for handler in handlers:
            if (handler.name, envelope.id) in seen:
                continue  # delivered before: a redelivery after a crash or a lost ack
            await self._deliver(handler, envelope)

    async def _deliver(self, handler: Handler, envelope: Envelope) -> None:
        result = await attempt(self._context, handler, envelope)
        if result.outcome is Outcome.FAILED:
            assert result.error is not None
            # Raises when the store fails: the message is not acknowledged, and comes back.
            await dead_letter(
                self._context,
                handler,
                envelope,
                result.error,
                attempts=result.attempts,
                first_failed_at=result.first_failed_at,
            )
        if not handler.wants_connection:
            # Handled or dead-lettered: marked now, so a redelivery skips the handler. A
            # connection-taking handler's mark means "its effects are committed" (it is
            # written with them), never "gave up": a replay of its letter must run it.
            await self._context.runtime.run_sync(self._inbox.mark, handler.name, envelope.id)

    async def _bury(self, received: Received, envelope: Envelope | None, reason: str) -> None:
        """Keep a message that cannot be handled as a dead letter, raw, then let it go.

        A message that cannot be decoded is named by what its bytes say, read leniently
        (the top-level ``name`` and ``id``), else by its topic and a new envelope id.
        Raises when the store fails: the message is not acknowledged, and comes back.
        """
        body = bytes(received.body[:_MAX_KEPT_PAYLOAD])
        if envelope is not None:
            envelope_id, event_name = envelope.id, envelope.name
        else:
            peeked = peek(body)
            event_name = peeked.name or received.topic
            if peeked.envelope_id is not None:
                envelope_id = peeked.envelope_id
            else:
                envelope_id = uuid7()
                reason += (
                    f"; the bytes carry no readable envelope id: {envelope_id} was made up "
                    "for this letter"
                )
        if len(received.body) > len(body):
            reason += f"; the first {len(body)} of its {len(received.body)} bytes are kept"
        letter = DeadLetter.raw(
            payload=body,
            envelope_id=envelope_id,
            event_name=event_name,
            handler=WORKER_HANDLER,
            error_type="eventbus.worker.Undeliverable",
            message=f"message {received.message_id} on {received.topic}: {reason}",
            attempts=received.delivery_count,
        )
        await bury(self._context, letter)

    @property
    def in_hand(self) -> int:
        """Messages taken from the transport and not finished yet."""
        return len(self._in_flight)

    async def _finish_in_flight(self) -> None:
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def settle(self) -> bool:
        """Wait until nothing is in hand (and, on a transport that can tell, nothing is
        waiting for this group); returns whether anything was handled meanwhile."""
        before = self.handled
        pending = self._pending
        while True:
            await self._finish_in_flight()
            waiting = pending(self.group) if pending is not None else 0
            if not waiting and not self._in_flight:
                return self.handled != before
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        """Stop taking messages; those in hand finish (call on the runtime's loop)."""
        self._stopping = True
        consuming = self._consuming
        if consuming is not None and not consuming.done():
            consuming.cancel()
