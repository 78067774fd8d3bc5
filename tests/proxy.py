"""A loopback TCP proxy that tests control, to cut a client's connections to a server.

It runs its own event loop in a daemon thread, so it works the same under sync and async
tests. ``cut()`` drops every open connection (the client sees a reset, as when a broker
goes away); ``pause()`` also refuses new connections until ``resume()``. It listens on
127.0.0.1 only and forwards to a port on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

__all__ = ["TCPProxy", "tcp_proxy"]


class TCPProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.connections = 0
        """How many client connections were accepted so far."""
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._paused = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TCPProxy:
        self._thread.start()
        self.port = self._call(self._listen())
        return self

    def _call(self, coroutine: object) -> int:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        return future.result(timeout=10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._paused:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target
            )
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, upstream_writer))
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for each in (writer, upstream_writer):
                self._writers.discard(each)
                each.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def cut(self) -> None:
        """Drop every open connection now; new ones are accepted (unless paused)."""

        async def cut() -> int:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()
            return 0

        self._call(cut())

    def pause(self) -> None:
        """Drop every connection and refuse new ones until ``resume``: a server that is down."""
        self._paused = True
        self.cut()

    def resume(self) -> None:
        self._paused = False

    def stop(self) -> None:
        async def close() -> int:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            return 0

        with contextlib.suppress(Exception):
            self._call(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.contextmanager
def tcp_proxy(target: int) -> Iterator[TCPProxy]:
    """A started proxy to 127.0.0.1:``target``, stopped at the end."""
    proxy = TCPProxy(target).start()
    try:
        yield proxy
    finally:
        proxy.stop()
