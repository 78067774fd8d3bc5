"""A bus's link to its transport: connecting once, forwarding outbox rows, the worker.

With a transport configured, a durable publish writes one outbox row per event for the
destination ``FORWARD`` (not one per handler: the handlers may live in other processes),
and the relay hands such rows here. They are published per topic (the event's name) and
completed only once the broker confirmed them; a failure keeps them for a later try, with
a growing delay, and never buries them, except a message the broker will never take
(``MessageRejectedError``), which becomes a dead letter.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import TYPE_CHECKING

from .. import hooks
from .._delivery import bury
from .._redact import describe_error, masked_logger
from ..deadletters import DeadLetter
from ..errors import ConfigurationError, MessageRejectedError
from ..outbox._rows import first_failure
from ._message import Message
from ._worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._bus import EventBus
    from .._envelope import Envelope
    from ..outbox import ClaimedRow
    from ..typing import OutboxStore, Transport

__all__ = ["FORWARD", "TransportLink"]

logger = masked_logger("eventbus.transport")

FORWARD = "@transport"
"""The outbox destination of rows bound for the transport (handler names cannot start with
'@'); also the handler name of dead letters for messages the broker refused for good."""

_MAX_RETRY_DELAY = 30.0
_DECLARE_WAIT = 10.0
"""Seconds the relay waits, at most, for its bus's worker to declare its subscription."""


def retry_delay(attempts: int) -> float:
    """The wait before the next try of a row the broker did not confirm: 0.2 s doubling to
    30 s, with jitter so relays do not retry in step."""
    base: float = min(_MAX_RETRY_DELAY, 0.2 * 2.0 ** min(attempts, 16))
    return base * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


class TransportLink:
    """Owns the transport of one bus: connects it once, forwards rows, runs the worker."""

    def __init__(
        self,
        bus: EventBus,
        transport: Transport,
        *,
        group: str,
        max_deliveries: int,
        remake: Callable[[], Transport] | None = None,
    ) -> None:
        self._bus = bus
        self.transport = transport
        self.group = group
        self.max_deliveries = max_deliveries
        self._remake = remake
        self._closed = False
        self._connected = False
        self._lock: asyncio.Lock | None = None
        self.worker: Worker | None = None
        self._worker_task: asyncio.Task[object] | None = None
        self._connecting = False
        """Whether the worker is still connecting or declaring (it holds no message yet)."""
        self._stopping = False
        self._declared = asyncio.Event()
        """Set once this bus's worker has declared its subscription (or could not reach
        the broker, or stopped): until then the relay holds its first publish."""

    def reopen(self) -> None:
        """After ``astop``: a new transport for the next start (its connections belong to
        the loop that runs it, and a stop may be followed by a start on a new loop)."""
        if not self._closed:
            return
        if self._remake is None:
            raise ConfigurationError(
                f"this bus was stopped, which closed the transport it was given "
                f"({self.transport!r}), and a transport instance cannot be opened again: "
                "build the bus with transport_url=... (or EVENTBUS_TRANSPORT_URL) so that "
                "each start connects anew"
            )
        self.transport = self._remake()
        self._closed = False
        # The last stop set these for good; the new start declares again, on its own loop.
        self._stopping = False
        self._connecting = False
        self._declared = asyncio.Event()

    async def ready(self) -> Transport:
        """The transport, connected (once, whoever asks first)."""
        if self._connected:
            return self.transport
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._connected:
                await self.transport.connect()
                self._connected = True
        return self.transport

    def make_worker(self, concurrency: int) -> Worker:
        self.worker = Worker(
            self._bus,
            self.transport,
            group=self.group,
            max_deliveries=self.max_deliveries,
            concurrency=concurrency,
        )
        return self.worker

    async def run_worker(self) -> None:
        worker = self.worker
        assert worker is not None
        self._worker_task = asyncio.current_task()
        self._connecting = True
        try:
            for attempt in itertools.count():
                try:
                    await self.ready()
                    break
                except Exception as error:
                    if self._stopping:
                        return
                    # The broker is out of reach: the relay need not wait for a
                    # declaration that is not coming soon (what it publishes is kept).
                    self._declared.set()
                    delay = min(30.0, 0.5 * 2.0 ** min(attempt, 6))
                    logger.warning(
                        "cannot connect the worker's transport (%s); trying again in %.1f s",
                        describe_error(error, limit=500),
                        delay,
                    )
                    await asyncio.sleep(delay)
            await self._declare(worker)
        except asyncio.CancelledError:
            if self._stopping:
                return  # stopped before the broker could be reached: nothing was in hand
            raise
        finally:
            self._connecting = False
            self._declared.set()
        await worker.run()

    async def _declare(self, worker: Worker) -> None:
        """Make the worker's subscription exist at the broker before it consumes, on a
        transport that can (``declare``, optional): a RabbitMQ group's queue, without
        which the relay's first messages would come back unroutable."""
        declare = getattr(self.transport, "declare", None)
        topics = worker.topics()
        if declare is None or not topics:
            return
        try:
            await declare(topics, group=self.group)
        except Exception as error:
            # The subscription declares again, with its own retries; the relay's rows
            # that come back meanwhile are kept and retried.
            logger.warning(
                "could not declare the worker's subscription ahead of the relay (%s)",
                describe_error(error, limit=500),
            )

    async def _worker_declared(self) -> None:
        """A bus that runs a worker publishes only once the worker has declared its
        subscription, waiting at most ``_DECLARE_WAIT`` (then it publishes anyway: what
        the broker returns is kept and retried)."""
        if self.worker is None or self._declared.is_set():
            return
        try:
            async with asyncio.timeout(_DECLARE_WAIT):
                await self._declared.wait()
        except TimeoutError:
            self._declared.set()  # waited enough: from now on, publish at once

    async def forward(
        self, outbox: OutboxStore, owner: str, rows: list[ClaimedRow]
    ) -> tuple[list[int], list[Envelope]]:
        """Publish rows bound for the transport; returns the ids to complete and, when a
        hook listens, the envelopes sent. Rows that failed are rescheduled here."""
        by_topic: dict[str, list[ClaimedRow]] = {}
        for row in rows:
            by_topic.setdefault(row.name, []).append(row)
        sent: list[ClaimedRow] = []
        done: list[int] = []
        await self._worker_declared()
        try:
            transport = await self.ready()
        except Exception as error:
            await self._reschedule(outbox, owner, rows, error)
            return [], []
        for topic, group in by_topic.items():
            try:
                await transport.publish(topic, *(_message(row) for row in group))
            except MessageRejectedError:
                await self._isolate(transport, outbox, owner, group, sent=sent, done=done)
            except Exception as error:
                await self._reschedule(outbox, owner, group, error)
            else:
                sent.extend(group)
        done.extend(row.id for row in sent)
        envelopes: list[Envelope] = []
        if sent and hooks.outbox_relayed.receivers:
            for row in sent:
                try:
                    envelopes.append(self._bus.codec.decode(row.payload))
                except Exception:  # noqa: S112 - the hook sees what can be decoded
                    continue
        return done, envelopes

    async def _isolate(
        self,
        transport: Transport,
        outbox: OutboxStore,
        owner: str,
        rows: list[ClaimedRow],
        *,
        sent: list[ClaimedRow],
        done: list[int],
    ) -> None:
        """A batch the broker refused: publish one by one, so only the poison is buried."""
        for row in rows:
            try:
                await transport.publish(row.name, _message(row))
            except MessageRejectedError as error:
                if await self._bury(row, error):
                    done.append(row.id)
                else:  # the letter could not be stored: the row stays, for a later try
                    await self._reschedule(outbox, owner, [row], error)
            except Exception as error:
                await self._reschedule(outbox, owner, [row], error)
            else:
                sent.append(row)

    async def _reschedule(
        self, outbox: OutboxStore, owner: str, rows: list[ClaimedRow], error: BaseException
    ) -> None:
        text = describe_error(error)
        logger.warning(
            "the transport did not confirm %d outbox rows (%s); they are kept and retried",
            len(rows),
            text,
        )
        run = self._bus._runtime.run_sync
        for row in rows:
            delay = retry_delay(row.attempts)
            await run(
                lambda row=row, delay=delay: outbox.reschedule(
                    row.id, owner=owner, attempts=row.attempts + 1, delay=delay, error=text
                )
            )

    async def _bury(self, row: ClaimedRow, error: MessageRejectedError) -> bool:
        """Keep a row the broker refused for good as a dead letter; whether it was kept."""
        letter = DeadLetter.raw(
            payload=row.payload,
            envelope_id=row.envelope_id,
            event_name=row.name,
            handler=FORWARD,
            error=error,
            attempts=row.attempts + 1,
            first_failed_at=first_failure(row),
        )
        try:
            await bury(self._bus, letter)
        except Exception:  # logged by bury()
            return False
        return True

    async def aclose(self, timeout: float = 10.0) -> None:
        """Stop the worker, let the messages in hand finish and be acknowledged (up to
        ``timeout``), then close the transport. A worker still waiting to reach its
        broker holds nothing: its wait (or its attempt) ends at once."""
        self._stopping = True
        self._declared.set()
        if self.worker is not None:
            self.worker.stop()
        task = self._worker_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            if self._connecting:
                task.cancel()
            await asyncio.wait([task], timeout=timeout)
        await self.transport.aclose()

    async def astop(self, timeout: float = 10.0) -> None:
        """``aclose``, then forget the worker and the connection, so that ``reopen`` and a
        new worker can follow (a bus stopped and started again)."""
        if self._closed:
            return
        try:
            await self.aclose(timeout)
        finally:
            self._closed = True
            self._connected = False
            self._lock = None
            self.worker = None
            self._worker_task = None


def _message(row: ClaimedRow) -> Message:
    return Message(row.envelope_id, row.name, row.key, row.payload)
