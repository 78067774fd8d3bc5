"""A bus's life: the runtime, the relay and the worker, draining, replays, closing.

One idea, held by ``EventBus`` and delegated to: the work that runs beside the publisher
(after-commit deliveries, the relay, the transport's worker), how tests wait for it
(``drain``), how it stops and starts again (``stop``/``start``, an ASGI lifespan's
``astop``/``astart``), and how it ends for good (``close``), each time finishing what is
in flight. It holds the bus's delivery context, never the bus: the relay it starts takes
the store and the sink the bus chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ._delivery import ReplayResult, replay
from .errors import BusClosedError, ConfigurationError
from .outbox import Relay
from .transports._worker import MemoryInbox

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._context import Context
    from .outbox._relay import Sink
    from .transports._link import TransportLink
    from .typing import OutboxStore

__all__ = ["Lifecycle"]

logger = logging.getLogger("eventbus.bus")


class Lifecycle:
    """Starting, draining and closing a bus's work: its runtime, relay and worker.

    ``sink`` is where the relay sends the rows of ``outbox`` (chosen by the bus);
    ``relays``: whether this process relays at all; ``link`` and ``worker``: the
    transport, and whether this process consumes it. ``on_close`` is called once the bus
    is closed for good (the bus then refuses publishes).
    """

    __slots__ = (
        "_context",
        "_link",
        "_lock",
        "_on_close",
        "_outbox",
        "_relays",
        "_runtime",
        "_sink",
        "_worker",
        "closed",
        "relay",
    )

    def __init__(
        self,
        context: Context,
        *,
        outbox: OutboxStore | None,
        sink: Sink | None,
        relays: bool,
        link: TransportLink | None,
        worker: bool,
        on_close: Callable[[], None],
    ) -> None:
        self._context = context
        self._runtime = context.runtime
        self._outbox = outbox
        self._sink = sink
        self._relays = relays
        self._link = link
        self._worker = worker
        self._on_close = on_close
        self._lock = threading.RLock()
        self.closed = False
        self.relay: Relay | None = None

    def check_open(self) -> None:
        if self.closed:
            raise BusClosedError("this bus is closed; it publishes and subscribes no more")

    def _mark_closed(self) -> None:
        with self._lock:
            self.closed = True
        self._on_close()

    def nudge(self) -> None:
        """Rows were committed: make sure the relay runs, and wake it."""
        relay = self.relay
        if relay is None or not relay.active:
            relay = self._start_relay()
        if relay is not None:
            relay.nudge()

    def relay_here(self) -> None:
        """This process is the relay (``eventbus relay``): relay whatever ``relay=`` the
        application's bus was built with (``relay=False`` keeps the web processes from
        relaying, and the relay command imports that same bus)."""
        with self._lock:
            self._relays = True

    def _start_relay(self) -> Relay | None:
        with self._lock:
            self._start_worker()
            relay = self.relay
            outbox, sink = self._outbox, self._sink
            if (relay is not None and relay.active) or outbox is None or self.closed:
                return relay
            if not self._relays or sink is None:
                return None
            self._runtime.ensure_started()
            if relay is None:
                relay = self.relay = Relay(outbox, sink, runtime=self._runtime)
            else:
                relay.rearm()  # stopped before: it runs again, on the loop there is now
            relay.active = True
            self._runtime.service(relay.run)
            return relay

    def _start_worker(self) -> None:
        """Consume the transport for this bus's durable handlers (with the lock held)."""
        link = self._link
        if link is None or link.worker is not None or not self._worker or self.closed:
            return
        try:
            link.reopen()
        except ConfigurationError:
            # Started lazily (a commit after stop()): say so; start() raises it instead.
            logger.exception("the bus's worker cannot start again")
            return
        self._runtime.ensure_started()
        inbox = self._outbox if self._outbox is not None else MemoryInbox()
        link.make_worker(self._context, inbox, self._runtime.concurrency)
        self._runtime.service(link.run_worker)

    # -- the runtime ---------------------------------------------------------------

    def start(self) -> None:
        """``EventBus.start``: the runtime in a thread of its own, the relay, the worker."""
        self.check_open()
        if self._link is not None:
            self._link.reopen()
        self._runtime.start()
        self._start_relay()

    async def astart(self) -> None:
        """``EventBus.astart``: the same on the current event loop."""
        self.check_open()
        if self._link is not None:
            self._link.reopen()
        self._runtime.attach()
        self._start_relay()

    def stop(self) -> None:
        """``EventBus.stop``: finish what is in flight, then stop; the bus stays open."""
        self._stop(final=False)

    async def astop(self) -> None:
        """``EventBus.astop``: ``stop`` from async code."""
        await self._astop(final=False)

    def _stop(self, *, final: bool) -> None:
        runtime = self._runtime
        deadline = time.monotonic() + runtime.shutdown_timeout
        quiet = True
        if runtime.running:
            runtime.refuse_in_loop("close() or stop()", "await bus.aclose() or bus.astop()")
            try:
                self._drain(_until(deadline), retries=False)
            except TimeoutError:
                self._report()
                quiet = False
            if final:
                self._mark_closed()
            with contextlib.suppress(Exception):
                runtime.call(
                    self._stop_services(_until(deadline)), _until(deadline) + 5, counted=False
                )
        if final:
            self._mark_closed()
            runtime.close(_until(deadline), report=quiet)
        else:
            runtime.stop(_until(deadline), report=quiet)

    async def _astop(self, *, final: bool) -> None:
        runtime = self._runtime
        deadline = time.monotonic() + runtime.shutdown_timeout
        quiet = True
        if runtime.running:
            try:
                await self._adrain(_until(deadline), retries=False)
            except TimeoutError:
                self._report()
                quiet = False
            if final:
                self._mark_closed()
            with contextlib.suppress(Exception):
                await runtime.acall(self._stop_services(_until(deadline)), counted=False)
        if final:
            self._mark_closed()
            await runtime.aclose(_until(deadline), report=quiet)
        else:
            await runtime.astop(_until(deadline), report=quiet)

    def _report(self) -> None:
        parts = self._unfinished_parts()
        if not parts:
            return  # it all finished as the time ran out
        logger.warning(
            "eventbus is stopping with work unfinished after its shutdown_timeout (%ss): %s. "
            "Unfinished after-commit deliveries are cancelled (their handlers may have run "
            "part way) and kept as dead letters (DeliveryCancelledError), to replay once "
            "safe; outbox rows and unacknowledged messages stay, and are delivered again",
            self._runtime.shutdown_timeout,
            "; ".join(parts),
        )

    async def _stop_services(self, timeout: float) -> None:
        """On the runtime's loop: the relay finishes its batch in hand, the worker the
        messages in hand (both up to ``timeout``), and the transport closes."""
        relay = self.relay
        if relay is not None and relay.active:
            await relay.aclose(timeout)
        if self._link is not None:
            await self._link.astop(timeout)

    def drain(self, timeout: float | None = None) -> None:
        """``EventBus.drain``: wait until everything published so far is handled."""
        self._drain(timeout, retries=True)

    async def adrain(self, timeout: float | None = None) -> None:
        """``EventBus.adrain``: ``drain`` from async code."""
        await self._adrain(timeout, retries=True)

    def _drain(self, timeout: float | None, *, retries: bool) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                self._runtime.drain(_left(deadline))
                if not self._runtime.running:
                    return
                delivered = self._runtime.call(self._settle(), _left(deadline), counted=False)
                if delivered or self._runtime.pending:
                    continue
                wait = self._next_retry() if retries else None
                if wait is None:
                    return
                time.sleep(_pause(wait, deadline))
        except TimeoutError:
            raise TimeoutError(self._unfinished(timeout)) from None

    async def _adrain(self, timeout: float | None, *, retries: bool) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                await self._runtime.adrain(_left(deadline))
                if not self._runtime.running:
                    return
                async with asyncio.timeout(_left(deadline)):
                    delivered = await self._runtime.acall(self._settle(), counted=False)
                if delivered or self._runtime.pending:
                    continue
                wait = self._next_retry() if retries else None
                if wait is None:
                    return
                await asyncio.sleep(_pause(wait, deadline))
        except TimeoutError:
            raise TimeoutError(self._unfinished(timeout)) from None

    def _next_retry(self) -> float | None:
        """Seconds until the relay's next retry is due; None when none waits."""
        relay = self.relay
        return None if relay is None else relay.next_due()

    def _unfinished(self, timeout: float | None) -> str:
        """What a drain that ran out of time leaves behind, in words."""
        left = "; ".join(self._unfinished_parts()) or "nothing now (it was finishing)"
        return f"drain() ran out of time after {timeout}s; still unfinished: {left}"

    def _unfinished_parts(self) -> list[str]:
        parts = []
        if self._runtime.pending:
            parts.append(f"{self._runtime.unfinished()} running")
        relay = self.relay
        if relay is not None and (held := relay.unfinished()):
            parts.append(held)
        worker = None if self._link is None else self._link.worker
        if worker is not None and worker.in_hand:
            parts.append(f"{worker.in_hand} messages in the worker's hands")
        return parts

    async def _settle(self) -> bool:
        """One round of drain: the relay finds nothing due, the worker holds nothing;
        whether either delivered something meanwhile (which may have published more)."""
        delivered = False
        relay = self.relay
        if relay is not None:
            delivered = await relay.settle()
        worker = None if self._link is None else self._link.worker
        if worker is not None:
            delivered = await worker.settle() or delivered
        return delivered

    # -- dead letters ----------------------------------------------------------------

    def replay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """``EventBus.replay``: run a dead letter's handler again."""
        self.check_open()
        return self._runtime.call(
            replay(self._context, _letter_id(letter_id), lease=lease), label="replay"
        )

    async def areplay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """``EventBus.areplay``: ``replay`` from async code."""
        self.check_open()
        return await self._runtime.acall(
            replay(self._context, _letter_id(letter_id), lease=lease), label="replay"
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """``EventBus.close``: finish what is in flight, stop, and refuse more: final."""
        self._stop(final=True)

    async def aclose(self) -> None:
        """``EventBus.aclose``: ``close`` from async code."""
        await self._astop(final=True)


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline); raises once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("drain() timed out with deliveries still running")
    return left


def _until(deadline: float) -> float:
    """Seconds until ``deadline``, never below zero."""
    return max(0.0, deadline - time.monotonic())


def _pause(wait: float, deadline: float | None) -> float:
    """How long a drain sleeps before it looks for a retry that is due in ``wait``
    seconds: not past the deadline, and a little at least (a row due now may be one
    another relay just took; no busy loop while the next claim tells)."""
    pause = max(wait, 0.01)
    if deadline is not None:
        pause = min(pause, max(0.0, deadline - time.monotonic()))
    return pause


def _letter_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ConfigurationError(f"{value!r} is not a dead letter id (a UUID)") from None
