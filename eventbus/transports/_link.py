"""A bus's link to its transport: connecting it once, running the worker, stopping.

The link owns the transport of one bus. The relay's forwarder (``_forward``) publishes
through it once connected, and waits for this bus's worker to declare its subscription
first (on a transport that keeps messages only for groups that exist: RabbitMQ).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

from .._redact import describe_error, masked_logger
from .._retry import Backoff
from ..errors import ConfigurationError
from ..typing import SupportsDeclare
from ._worker import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._context import Context
    from ..typing import Inbox, Transport

__all__ = ["TransportLink"]

logger = masked_logger("eventbus.transport")

_DECLARE_WAIT = 10.0
"""Seconds the relay waits, at most, for its bus's worker to declare its subscription."""
_RECONNECT = Backoff(first=0.5, cap=30.0)
"""The worker's waits between attempts to reach its broker."""


class TransportLink:
    """Owns the transport of one bus: connects it once (whoever asks first: the worker or
    the relay's forwarder), runs the worker, and stops them."""

    def __init__(
        self,
        transport: Transport,
        *,
        group: str,
        max_deliveries: int,
        remake: Callable[[], Transport] | None = None,
    ) -> None:
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

    def make_worker(self, context: Context, inbox: Inbox, concurrency: int) -> Worker:
        """The worker that runs ``context``'s durable handlers on this transport, with
        ``inbox`` (the bus's outbox, or one in memory)."""
        self.worker = Worker(
            context,
            self.transport,
            inbox,
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
                    delay = _RECONNECT.delay(attempt)
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
        transport that can (``SupportsDeclare``): a RabbitMQ group's queue, without
        which the relay's first messages would come back unroutable."""
        transport = self.transport
        topics = worker.topics()
        if not isinstance(transport, SupportsDeclare) or not topics:
            return
        try:
            await transport.declare(topics, group=self.group)
        except Exception as error:
            # The subscription declares again, with its own retries; the relay's rows
            # that come back meanwhile are kept and retried.
            logger.warning(
                "could not declare the worker's subscription ahead of the relay (%s)",
                describe_error(error, limit=500),
            )

    async def worker_declared(self) -> None:
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
