"""The runtime: where work that is not inline runs (deferred handlers, retries, replays).

One asyncio loop, either the application's own (*attached*: ``async with bus`` or
``await bus.astart()`` in an ASGI lifespan, so async handlers use the loop that made the
application's async resources) or a daemon thread of its own (*owned*: ``bus.start()``, or
the first deferred delivery of a sync application, which never sees asyncio). Sync
handlers run in a bounded thread pool, so a slow one does not stall the loop; contextvars
travel with every piece of work, so causation links up in threads too.
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
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ._redact import masked_logger
from .errors import ConfigurationError

__all__ = ["Runtime"]

logger = masked_logger("eventbus.runtime")

T = TypeVar("T")
Sleep = Callable[[float], object]


class Runtime:
    """An event loop for non-inline work, with a drain and a bounded concurrency."""

    def __init__(
        self,
        *,
        concurrency: int = 64,
        workers: int = 8,
        sleep: Sleep | None = None,
        shutdown_timeout: float = 10.0,
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: _Workers | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._services: set[asyncio.Task[object]] = set()
        self._pending = 0
        self._idle = threading.Condition()
        self._lock = threading.Lock()
        self._stopped = False

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

    # -- starting ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a loop is there to run work."""
        loop = self._loop
        return loop is not None and not loop.is_closed() and not self._stopped

    @property
    def owned(self) -> bool:
        """Whether the runtime runs its own thread (rather than the application's loop)."""
        return self._thread is not None

    def start(self) -> None:
        """Run a loop in a daemon thread of our own (sync applications)."""
        with self._lock:
            self._check_not_stopped()
            if self._loop is not None and not self._loop.is_closed():
                return  # started already, or attached to a loop that still runs
            ready = threading.Event()
            loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(loop)
                self._semaphore = asyncio.Semaphore(self._concurrency)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="eventbus-runtime", daemon=True)
            self._loop, self._thread = loop, thread
            thread.start()
            ready.wait()
            atexit.register(self._at_exit)

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Run work on ``loop`` (default: the running loop)."""
        loop = loop or asyncio.get_running_loop()
        with self._lock:
            self._check_not_stopped()
            if self._loop is loop:
                return
            if self._loop is not None and not self._loop.is_closed():
                raise ConfigurationError(
                    "this bus already runs on another event loop; start it once, from the "
                    "loop that owns the application's async resources"
                )
            self._loop, self._thread = loop, None
            self._semaphore = asyncio.Semaphore(self._concurrency)

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

    def _check_not_stopped(self) -> None:
        if self._stopped:
            raise ConfigurationError("this bus's runtime was stopped; it runs no more work")

    # -- running work ------------------------------------------------------------------

    def submit(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run the coroutine ``make()`` on the loop, from any thread; counted for drain."""
        self.ensure_started()
        loop = self._loop
        assert loop is not None
        with self._idle:
            self._pending += 1
        try:
            if self._in_loop_thread():
                self._spawn(make)
            else:
                loop.call_soon_threadsafe(self._spawn, make)
        except RuntimeError:  # the loop closed under us
            self._done()
            raise

    def service(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run a long-lived coroutine (the relay) on the loop; not counted by drain."""
        self.ensure_started()
        loop = self._loop
        assert loop is not None

        def spawn() -> None:
            task = loop.create_task(make())
            self._services.add(task)
            task.add_done_callback(self._services.discard)

        if self._in_loop_thread():
            spawn()
        else:
            loop.call_soon_threadsafe(spawn)

    def _spawn(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(self._run(make))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, make: Callable[[], Coroutine[Any, Any, object]]) -> None:
        semaphore = self._semaphore
        assert semaphore is not None
        try:
            async with semaphore:
                await make()
        except Exception:  # the delivery pipeline handles failures; this is a bug guard
            logger.exception("eventbus work failed outside the delivery pipeline")
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    async def run_sync(self, function: Callable[..., T], *args: Any) -> T:
        """Run a sync function in the worker pool, in a copy of the current context."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = _Workers(self._workers)
        context = contextvars.copy_context()
        return await self._pool.run(functools.partial(context.run, function, *args))

    async def sleep(self, seconds: float) -> None:
        """Wait between attempts: the injected sleep (tests) or asyncio.sleep."""
        if self._injected_sleep is None:
            await asyncio.sleep(seconds)
            return
        self._injected_sleep(seconds)
        await asyncio.sleep(0)

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the runtime's loop and wait for its result (sync callers).

        Counted as pending, so ``drain`` (and so ``close``) waits for it: a replay in
        flight is finished, not abandoned with its dead letter still claimed.
        """
        try:
            self.ensure_started()
            self._refuse_in_loop()
        except BaseException:
            coroutine.close()
            raise
        loop = self._loop
        assert loop is not None
        self._begin()
        return asyncio.run_coroutine_threadsafe(self._counted(coroutine), loop).result(timeout)

    async def acall(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the runtime's loop, awaited from any loop; counted too."""
        try:
            self.ensure_started()
        except BaseException:
            coroutine.close()
            raise
        self._begin()
        if self._in_loop_thread():
            return await self._counted(coroutine)
        loop = self._loop
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(self._counted(coroutine), loop)
        return await asyncio.wrap_future(future)

    def _refuse_in_loop(self) -> None:
        if self._in_loop_thread():
            raise RuntimeError(
                "this sync call would block the event loop it needs; "
                "use the async form (areplay, adrain) from async code"
            )

    def _begin(self) -> None:
        with self._idle:
            self._pending += 1

    async def _counted(self, coroutine: Coroutine[Any, Any, T]) -> T:
        try:
            return await coroutine
        finally:
            self._done()

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
            return self._pending

    def drain(self, timeout: float | None = None) -> None:
        """Block until every submitted piece of work has finished (sync callers)."""
        if self._in_loop_thread():
            raise RuntimeError(
                "drain() would block the event loop the work runs on: use 'await bus.adrain()'"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self._pending} deliveries still running after {timeout}s")
                self._idle.wait(remaining)

    async def adrain(self, timeout: float | None = None) -> None:
        """Wait until every submitted piece of work has finished (async callers)."""
        if not self._in_loop_thread():
            await asyncio.to_thread(self.drain, timeout)
            return
        async with asyncio.timeout(timeout):
            while self.pending:
                tasks = [task for task in self._tasks if task is not asyncio.current_task()]
                if tasks:
                    await asyncio.wait(tasks)
                else:
                    await asyncio.sleep(0)  # submitted from another thread, not spawned yet

    def stop(self) -> None:
        """Drain (up to the shutdown timeout), then stop the owned thread and the pool."""
        if self._stopped:
            return
        try:
            if self.running and not self._in_loop_thread():
                self.drain(self._shutdown_timeout)
        except TimeoutError:
            logger.warning(
                "eventbus stopped with %d deliveries unfinished after %ss",
                self.pending,
                self._shutdown_timeout,
            )
        finally:
            self._shutdown()

    async def astop(self) -> None:
        """Drain (up to the shutdown timeout), then stop (async callers)."""
        if self._stopped:
            return
        try:
            if self.running:
                await self.adrain(self._shutdown_timeout)
        except TimeoutError:
            logger.warning(
                "eventbus stopped with %d deliveries unfinished after %ss",
                self.pending,
                self._shutdown_timeout,
            )
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            loop, thread, pool = self._loop, self._thread, self._pool
        if thread is not None and loop is not None:
            atexit.unregister(self._at_exit)
            if thread.is_alive() and not loop.is_closed():
                # Cancel what is left and let it unwind on the loop before it stops.
                finished = asyncio.run_coroutine_threadsafe(self._cancel_all(), loop)
                with contextlib.suppress(Exception):
                    finished.result(timeout=5)
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not thread.is_alive():
                loop.close()
        elif loop is not None and not loop.is_closed():
            # Attached: the loop is the application's; only our unfinished tasks go.
            for task in [*self._tasks, *self._services]:
                loop.call_soon_threadsafe(task.cancel)
        if pool is not None:
            pool.shutdown()

    async def _cancel_all(self) -> None:
        tasks = [task for task in (*self._tasks, *self._services) if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _at_exit(self) -> None:
        # Interpreter exit in a sync application: finish what is in flight, within reason.
        self.stop()


class _Workers:
    """A fixed set of daemon threads that run sync functions for the loop.

    Not a ThreadPoolExecutor on purpose: the interpreter shuts those down before atexit
    callbacks run, so a sync application's last after-commit deliveries, drained at exit,
    would find no thread to run on. Daemon workers live until the process ends.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._busy = 0

    async def run(self, function: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._busy += 1
            if self._busy > len(self._threads) and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"eventbus-handler-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
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
            finally:
                with self._lock:
                    self._busy -= 1

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
