"""A bus's life: the runtime, the relay and the worker, draining, replays, closing.

A mixin of ``EventBus``, kept apart because it owns one idea: the work that runs beside
the publisher (after-commit deliveries, the relay, the transport's worker), how tests
wait for it (``drain``), and how it ends (``close``), finishing what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING, cast

from ._replay import ReplayResult, replay_letter
from .errors import ConfigurationError
from .outbox import Relay

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._runtime import Runtime
    from .transports._link import TransportLink
    from .typing import OutboxStore

__all__ = ["Lifecycle"]


class Lifecycle:
    """Starting, draining and closing for ``EventBus``, which holds this state."""

    __slots__ = ()
    _closed: bool
    _link: TransportLink | None
    _lock: threading.RLock
    _outbox: OutboxStore | None
    _relay: Relay | None
    _relays: bool
    _runtime: Runtime
    _worker: bool

    def _check_open(self) -> None:
        raise NotImplementedError  # EventBus's

    def _mark_closed(self) -> None:
        raise NotImplementedError  # EventBus's

    def _bus(self) -> EventBus:
        return cast("EventBus", self)

    def _nudge(self) -> None:
        """Rows were committed: make sure the relay runs, and wake it."""
        relay = self._relay or self._start_relay()
        if relay is not None:
            relay.nudge()

    def _start_relay(self) -> Relay | None:
        with self._lock:
            self._start_worker()
            if self._relay is not None or self._outbox is None or self._closed:
                return self._relay
            if not self._relays:
                return None
            self._runtime.ensure_started()
            bus = self._bus()
            relay = bus._relay = Relay(bus, self._outbox)
            self._runtime.service(relay.run)
            return relay

    def _start_worker(self) -> None:
        """Consume the transport for this bus's durable handlers (with the lock held)."""
        link = self._link
        if link is None or link.worker is not None or not self._worker or self._closed:
            return
        self._runtime.ensure_started()
        link.make_worker(self._runtime.concurrency)
        self._runtime.service(link.run_worker)

    # -- the runtime ---------------------------------------------------------------

    def start(self) -> None:
        """Start the runtime in a thread of its own (sync applications).

        Optional: the first after-commit delivery starts it. ``close()`` (or the end of
        the interpreter) drains what is in flight, up to ``shutdown_timeout``.
        """
        self._check_open()
        self._runtime.start()
        self._start_relay()

    async def astart(self) -> None:
        """Run the runtime on the current event loop (``async with bus`` does this)."""
        self._check_open()
        self._runtime.attach()
        self._start_relay()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled (tests).

        After-commit deliveries and their retries, and every outbox row that is due
        (rows waiting for a later retry time are not waited for).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._runtime.drain(_left(deadline))
            if not self._runtime.running:
                return
            delivered = self._runtime.call(self._settle(), _left(deadline))
            if not delivered and self._runtime.pending == 0:
                return

    async def adrain(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled, from async code."""
        async with asyncio.timeout(timeout):
            while True:
                await self._runtime.adrain()
                if not self._runtime.running:
                    return
                delivered = await self._runtime.acall(self._settle())
                if not delivered and self._runtime.pending == 0:
                    return

    async def _settle(self) -> bool:
        """One round of drain: the relay finds nothing due, the worker holds nothing;
        whether either delivered something meanwhile (which may have published more)."""
        delivered = False
        relay = self._relay
        if relay is not None:
            delivered = await relay.settle()
        worker = None if self._link is None else self._link.worker
        if worker is not None:
            delivered = await worker.settle() or delivered
        return delivered

    # -- dead letters ----------------------------------------------------------------

    def replay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """Run a dead letter's handler again; on success the letter is gone.

        On failure the letter stays, with the new error and more attempts. Two replays
        of one letter at once run its handler once: the second raises
        ``ReplayInProgressError``. ``lease`` bounds how long a replay may hold the
        letter before another may take it over (its replayer died).
        """
        self._check_open()
        return self._runtime.call(replay_letter(self._bus(), _letter_id(letter_id), lease=lease))

    async def areplay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """Run a dead letter's handler again, from async code."""
        self._check_open()
        return await self._runtime.acall(
            replay_letter(self._bus(), _letter_id(letter_id), lease=lease)
        )

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Finish in-flight deliveries (up to ``shutdown_timeout``), then refuse more.

        Later publishes and subscriptions raise ``BusClosedError``.
        """
        if self._runtime.running and not self._closed:
            with contextlib.suppress(TimeoutError, RuntimeError):
                self.drain(self._runtime_timeout())
        self._mark_closed()
        if self._relay is not None:
            self._relay.stop()
        if self._link is not None and self._runtime.running:
            with contextlib.suppress(Exception):
                self._runtime.call(
                    self._link.aclose(self._runtime_timeout()), self._runtime_timeout() + 5
                )
        self._runtime.stop()

    async def aclose(self) -> None:
        """Close the bus from async code."""
        if self._runtime.running and not self._closed:
            with contextlib.suppress(TimeoutError):
                await self.adrain(self._runtime_timeout())
        self._mark_closed()
        if self._relay is not None:
            self._relay.stop()
        if self._link is not None and self._runtime.running:
            with contextlib.suppress(Exception):
                await self._runtime.acall(self._link.aclose(self._runtime_timeout()))
        await self._runtime.astop()

    def _runtime_timeout(self) -> float:
        return self._runtime.shutdown_timeout


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline); raises once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("drain() timed out with deliveries still running")
    return left


def _letter_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ConfigurationError(f"{value!r} is not a dead letter id (a UUID)") from None
