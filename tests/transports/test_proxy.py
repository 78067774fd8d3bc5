"""The test proxy itself: it forwards, and cutting it really cuts (fault tests rely on it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tests.proxy import tcp_proxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with server:
        yield int(server.getsockname()[1])


def _echo(client: socket.socket) -> None:
    with client:
        while data := client.recv(1024):
            client.sendall(data)


def test_forwards_then_cut_resets_then_pause_refuses(echo_port: int) -> None:
    with tcp_proxy(echo_port) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        opened = [client]
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        proxy.cut()
        client.settimeout(5)
        assert client.recv(4) == b""  # the peer went away
        client.close()
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        opened.append(again)
        again.sendall(b"pong")
        assert again.recv(4) == b"pong"
        proxy.pause()
        assert again.recv(4) == b""
        refused = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        opened.append(refused)
        assert refused.recv(4) == b""
        proxy.resume()
        third = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        opened.append(third)
        third.sendall(b"back")
        assert third.recv(4) == b"back"
        assert proxy.connections == 3
        for each in opened:
            each.close()
