"""The runtime: where work that is not inline runs (deferred handlers, retries, replays).

One asyncio loop, either the application's own (*attached*: ``async with bus`` or
``await bus.astart()`` in an ASGI lifespan, so async handlers use the loop that made the
application's async resources) or a daemon thread of its own (*owned*: ``bus.start()``, or
the first deferred delivery of a sync application, which never sees asyncio). Sync
handlers run in a fixed pool of threads, so a slow one does not stall the loop; contextvars
travel with every piece of work, so causation links up in threads too.

A stop ends one *run* (its loop or its share of the application's, its threads, its
counts) and a later start makes another, on whatever loop there is then. The end of the
interpreter stops an owned runtime (through the bus's own stop, which settles its relay),
and needs no thread it does not have already: Python 3.12 starts none at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._redact import masked_logger
from .errors import ConfigurationError

__all__ = ["Runtime"]

logger = masked_logger("eventbus.runtime")

T = TypeVar("T")
Sleep = Callable[[float], object]


class _Run:
    """One start of the runtime: its loop, its threads, and the work counted on them.

    A stop discards it whole; a later start makes a new one (a new loop each time in an
    ASGI test client). Work still unwinding on a discarded run counts down its own tallies,
    never those of the run after it.
    """

    __slots__ = ("labels", "loop", "pending", "pool", "semaphore", "services", "tasks", "thread")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        thread: threading.Thread | None,
        *,
        concurrency: int,
        workers: int,
    ) -> None:
        self.loop = loop
        self.thread = thread
        # Every worker thread is started now, by the thread that starts the runtime: an
        # exiting Python 3.12 refuses new threads, and a sync script's last after-commit
        # deliveries (drained at exit) would otherwise find none to run on.
        self.pool = _Workers(workers)
        self.semaphore = asyncio.Semaphore(concurrency)  # binds to its loop on first use
        self.tasks: set[asyncio.Task[None]] = set()
        self.services: set[asyncio.Task[object]] = set()
        self.pending = 0
        self.labels: Counter[str] = Counter()


class Runtime:
    """An event loop for non-inline work, with a drain and a bounded concurrency.

    ``start``/``attach`` and ``stop`` may repeat; ``close`` is final.
    """

    def __init__(
        self,
        *,
        concurrency: int = 64,
        workers: int = 8,
        sleep: Sleep | None = None,
        shutdown_timeout: float = 10.0,
        on_exit: Callable[[], object] | None = None,
    ) -> None:
        for name, value in (("concurrency", concurrency), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        if shutdown_timeout < 0:
            raise ConfigurationError(f"shutdown_timeout must be >= 0, got {shutdown_timeout!r}")
        self._concurrency = concurrency
        self._workers = workers
        self._injected_sleep = sleep
        self._shutdown_timeout = shutdown_timeout
        self._on_exit = on_exit
        self._run: _Run | None = None
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def concurrency(self) -> int:
        """How many deliveries may run at once."""
        return self._concurrency

    @property
    def workers(self) -> int:
        """How many threads run sync handlers."""
        return self._workers

    @property
    def shutdown_timeout(self) -> float:
        """How long stopping waits for work in flight."""
        return self._shutdown_timeout

    @property
    def injected_sleep(self) -> bool:
        """Whether waits between retries are the injected ``sleep`` (tests), not real."""
        return self._injected_sleep is not None

    # -- starting ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a loop is there to run work."""
        run = self._run
        return run is not None and not run.loop.is_closed()

    @property
    def owned(self) -> bool:
        """Whether the runtime runs its own thread (rather than the application's loop)."""
        run = self._run
        return run is not None and run.thread is not None

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None:
        run = self._run
        return None if run is None else run.loop

    def start(self) -> None:
        """Run a loop in a daemon thread of our own (sync applications)."""
        with self._lock:
            self._check_open()
            if self.running:
                return  # started already, or attached to a loop that still runs
            self._abandon()
            ready = threading.Event()
            loop = asyncio.new_event_loop()

            def run_loop() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run_loop, name="eventbus-runtime", daemon=True)
            self._run = _Run(loop, thread, concurrency=self._concurrency, workers=self._workers)
            thread.start()
            ready.wait()
            atexit.register(self._at_exit)

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Run work on ``loop`` (default: the running loop)."""
        loop = loop or asyncio.get_running_loop()
        with self._lock:
            self._check_open()
            if self._loop is loop:
                return
            if self.running:
                raise ConfigurationError(
                    "this bus already runs on another event loop; start it once, from the "
                    "loop that owns the application's async resources (or stop it first)"
                )
            self._abandon()
            self._run = _Run(loop, None, concurrency=self._concurrency, workers=self._workers)

    def ensure_started(self) -> None:
        """Start lazily: attach to the running loop if there is one, else own a thread."""
        if self.running:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.start()
        else:
            self.attach(loop)

    def _abandon(self) -> None:
        """Forget a run whose loop closed without a stop (with the lock held)."""
        run, self._run = self._run, None
        if run is None:
            return
        if run.pending:
            logger.warning(
                "eventbus lost %s: their event loop closed before the bus was stopped "
                "(await bus.astop() when the application shuts down)",
                _describe(run.labels),
            )
        run.pool.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigurationError("this bus's runtime was closed; it runs no more work")

    def _current(self) -> _Run:
        run = self._run
        if run is None:
            raise RuntimeError("the bus's runtime is stopped")
        return run

    # -- running work ------------------------------------------------------------------

    def submit(
        self,
        make: Callable[[], Coroutine[Any, Any, object]],
        label: str = "",
        *,
        cancelled: Callable[[bool], object] | None = None,
    ) -> None:
        """Run the coroutine ``make()`` on the loop, from any thread; counted for drain.

        ``label`` (a handler's name) says what is still running when a drain or a stop
        runs out of time. ``cancelled(started)`` runs on the loop if a stop cancels the
        work, before or after ``make()`` began (``started``), so it is never lost unsaid.
        """
        self.ensure_started()
        run = self._current()
        self._begin(run, label)
        try:
            if self._in_loop_thread():
                self._spawn(run, make, label, cancelled)
            else:
                run.loop.call_soon_threadsafe(self._spawn, run, make, label, cancelled)
        except RuntimeError:  # the loop closed under us
            self._done(run, label)
            raise

    def service(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run a long-lived coroutine (the relay) on the loop; not counted by drain."""
        self.ensure_started()
        run = self._current()

        def spawn() -> None:
            task = run.loop.create_task(make())
            run.services.add(task)
            task.add_done_callback(run.services.discard)

        if self._in_loop_thread():
            spawn()
        else:
            run.loop.call_soon_threadsafe(spawn)

    def _spawn(
        self,
        run: _Run,
        make: Callable[[], Coroutine[Any, Any, object]],
        label: str,
        cancelled: Callable[[bool], object] | None,
    ) -> None:
        started = _Started()
        task = run.loop.create_task(self._work(run, make, label, started))
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)
        if cancelled is not None:
            # A done callback, not an except clause: a task cancelled before its first
            # step never enters its coroutine (work still queued behind the semaphore).
            task.add_done_callback(functools.partial(_when_cancelled, cancelled, started))

    async def _work(
        self,
        run: _Run,
        make: Callable[[], Coroutine[Any, Any, object]],
        label: str,
        started: _Started,
    ) -> None:
        try:
            async with run.semaphore:
                started.value = True
                await make()
        except Exception:  # the delivery pipeline handles failures; this is a bug guard
            logger.exception("eventbus work failed outside the delivery pipeline")
        finally:
            self._done(run, label)

    def _begin(self, run: _Run, label: str) -> None:
        with self._idle:
            run.pending += 1
            run.labels[label] += 1

    def _done(self, run: _Run, label: str) -> None:
        with self._idle:
            run.pending -= 1
            run.labels[label] -= 1
            if not run.labels[label]:
                del run.labels[label]
            if run.pending == 0:
                self._idle.notify_all()

    def call_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the loop soon, from any thread (setting an event there, say);
        nothing when no loop runs, or it closed meanwhile."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(callback)

    async def run_sync(self, function: Callable[..., T], *args: Any) -> T:
        """Run a sync function in the worker pool, in a copy of the current context."""
        context = contextvars.copy_context()
        return await self._current().pool.run(functools.partial(context.run, function, *args))

    async def sleep(self, seconds: float) -> None:
        """Wait between attempts: the injected sleep (tests) or asyncio.sleep."""
        if self._injected_sleep is None:
            await asyncio.sleep(seconds)
            return
        self._injected_sleep(seconds)
        await asyncio.sleep(0)

    def call(
        self,
        coroutine: Coroutine[Any, Any, T],
        timeout: float | None = None,
        *,
        label: str = "",
        counted: bool = True,
    ) -> T:
        """Run ``coroutine`` on the runtime's loop and wait for its result (sync callers).

        Counted as pending (unless ``counted`` is False: drain's own steps), so ``drain``
        (and so ``close``) waits for it: a replay in flight is finished, not abandoned
        with its dead letter still claimed.
        """
        try:
            self.ensure_started()
            self.refuse_in_loop()
            run = self._current()
        except BaseException:
            coroutine.close()
            raise
        if counted:
            self._begin(run, label)
            coroutine = self._counted(run, coroutine, label)
        return asyncio.run_coroutine_threadsafe(coroutine, run.loop).result(timeout)

    async def acall(
        self, coroutine: Coroutine[Any, Any, T], *, label: str = "", counted: bool = True
    ) -> T:
        """Run ``coroutine`` on the runtime's loop, awaited from any loop; counted too."""
        try:
            self.ensure_started()
            run = self._current()
        except BaseException:
            coroutine.close()
            raise
        if counted:
            self._begin(run, label)
            coroutine = self._counted(run, coroutine, label)
        if self._in_loop_thread():
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, run.loop))

    def refuse_in_loop(
        self, call: str = "this sync call", instead: str = "the async form (areplay, adrain)"
    ) -> None:
        """Raise if the caller runs on the runtime's loop, which ``call`` would block."""
        if self._in_loop_thread():
            raise RuntimeError(
                f"{call} would block the event loop it needs; use {instead} from async code"
            )

    async def _counted(self, run: _Run, coroutine: Coroutine[Any, Any, T], label: str) -> T:
        try:
            return await coroutine
        finally:
            self._done(run, label)

    def _in_loop_thread(self) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    # -- draining and stopping ---------------------------------------------------------

    @property
    def pending(self) -> int:
        """Pieces of work submitted and not finished (retries waiting included)."""
        with self._idle:
            run = self._run
            return 0 if run is None else run.pending

    def unfinished(self) -> str:
        """What is still running, by label: ``"3 deliveries (notify: 2, mail: 1)"``."""
        with self._idle:
            run = self._run
            return _describe(Counter() if run is None else run.labels)

    def drain(self, timeout: float | None = None) -> None:
        """Block until every submitted piece of work has finished (sync callers)."""
        if self._in_loop_thread():
            raise RuntimeError(
                "drain() would block the event loop the work runs on: use 'await bus.adrain()'"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while (run := self._run) is not None and run.pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{_describe(run.labels)} still running after {timeout}s")
                self._idle.wait(remaining)

    async def adrain(self, timeout: float | None = None) -> None:
        """Wait until every submitted piece of work has finished (async callers)."""
        if not self._in_loop_thread():
            # Waits on the caller's loop: no thread of its own (none can start at exit).
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.pending:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{self.unfinished()} still running after {timeout}s")
                await asyncio.sleep(0.005)
            return
        try:
            async with asyncio.timeout(timeout):
                while (run := self._run) is not None and run.pending:
                    tasks = [task for task in run.tasks if task is not asyncio.current_task()]
                    if tasks:
                        await asyncio.wait(tasks)
                    else:
                        await asyncio.sleep(0)  # submitted from another thread, not spawned yet
        except TimeoutError:
            raise TimeoutError(f"{self.unfinished()} still running after {timeout}s") from None

    def stop(self, timeout: float | None = None, *, report: bool = True) -> None:
        """Drain (up to ``timeout``, by default the shutdown timeout), then stop the loop's
        work and the threads; ``report``: log what was unfinished.

        A later ``start``/``attach`` (or the next piece of work) starts it again.
        """
        try:
            if self.running and not self._in_loop_thread():
                self.drain(self._shutdown_timeout if timeout is None else timeout)
        except TimeoutError:
            if report:
                self._report_unfinished()
        finally:
            self._shutdown()

    async def astop(self, timeout: float | None = None, *, report: bool = True) -> None:
        """Drain (up to ``timeout``), then stop (async callers)."""
        try:
            if self.running:
                await self.adrain(self._shutdown_timeout if timeout is None else timeout)
        except TimeoutError:
            if report:
                self._report_unfinished()
        finally:
            self._shutdown()

    def close(self, timeout: float | None = None, *, report: bool = True) -> None:
        """Stop, and refuse to start again."""
        self._closed = True
        self.stop(timeout, report=report)

    async def aclose(self, timeout: float | None = None, *, report: bool = True) -> None:
        """Stop, and refuse to start again (async callers)."""
        self._closed = True
        await self.astop(timeout, report=report)

    def _report_unfinished(self) -> None:
        logger.warning(
            "eventbus stopped after its shutdown_timeout (%ss) with %s unfinished; they are "
            "cancelled (durable rows stay in the outbox and are delivered later)",
            self._shutdown_timeout,
            self.unfinished(),
        )

    def _shutdown(self) -> None:
        with self._lock:
            run, self._run = self._run, None
        if run is None:
            return
        loop, thread = run.loop, run.thread
        if thread is not None:
            atexit.unregister(self._at_exit)
            if thread.is_alive() and not loop.is_closed():
                # Cancel what is left and let it unwind on the loop before it stops.
                finished = asyncio.run_coroutine_threadsafe(_cancel_all(run), loop)
                with contextlib.suppress(Exception):
                    finished.result(timeout=5)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()
        elif not loop.is_closed():
            # Attached: the loop is the application's; only our unfinished tasks go.
            for task in [*run.tasks, *run.services]:
                if self._on_loop(loop):
                    task.cancel()
                else:
                    loop.call_soon_threadsafe(task.cancel)
        run.pool.shutdown()
        with self._idle:
            self._idle.notify_all()

    @staticmethod
    def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _at_exit(self) -> None:
        # Interpreter exit in a sync application: finish what is in flight, within reason
        # (the bus's own stop, which also settles its relay, when it is given).
        try:
            if self._on_exit is not None:
                self._on_exit()
        except Exception:
            logger.exception("eventbus could not finish its work at interpreter exit")
        finally:
            self.stop()


class _Started:
    """Whether a piece of work got past the concurrency bound and began."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


def _when_cancelled(
    cancelled: Callable[[bool], object], started: _Started, task: asyncio.Task[None]
) -> None:
    if not task.cancelled():
        return
    try:
        cancelled(started.value)
    except Exception:  # it reports a loss itself; this guards the loop's shutdown
        logger.exception("eventbus could not report work a stop cancelled")


async def _cancel_all(run: _Run) -> None:
    tasks = [task for task in (*run.tasks, *run.services) if not task.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _describe(labels: Counter[str]) -> str:
    """``3 deliveries (notify: 2, mail: 1)``: how many pieces of work, and of what."""
    total = sum(labels.values())
    noun = "delivery" if total == 1 else "deliveries"
    named = ", ".join(f"{label}: {count}" for label, count in sorted(labels.items()) if label)
    return f"{total} {noun} ({named})" if named else f"{total} {noun}"


class _Workers:
    """A fixed set of daemon threads that run sync functions for the loop.

    Not a ThreadPoolExecutor on purpose: the interpreter shuts those down before atexit
    callbacks run, so a sync application's last after-commit deliveries, drained at exit,
    would find no thread to run on. Every thread starts here, up front: Python 3.12 refuses
    to start one once the interpreter is exiting. Daemon workers live until the process
    ends, or until ``shutdown``.
    """

    def __init__(self, size: int) -> None:
        self._queue: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"eventbus-handler-{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, function))
        return await future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, function = item
            try:
                result = function()
            except BaseException as error:
                _settle(loop, future, error=error)
            else:
                _settle(loop, future, result=result)

    def shutdown(self) -> None:
        """Let every worker finish its current function, then end."""
        for _ in self._threads:
            self._queue.put(None)


def _settle(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    *,
    result: object = None,
    error: BaseException | None = None,
) -> None:
    def settle() -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop closed while the function ran; nobody waits any more
        logger.debug("a sync handler finished after its event loop closed")
