"""Loopback servers for tests: reach one, or skip with the reason (fail under CI=true).

Brokers are found at their standard ports on 127.0.0.1, or wherever
``EVENTBUS_TEST_{KIND}_URL`` points (``KIND`` = REDIS, RABBITMQ, NATS). Only loopback
addresses are ever contacted by the defaults.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "BROKER_URLS",
    "in_ci",
    "namespaced_url",
    "port_of",
    "require_broker",
    "unavailable",
    "via_port",
]

BROKER_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip on a laptop without the server; fail in CI, where every server must be up."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: servers are required)")
    pytest.skip(reason)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_broker(kind: str) -> str:
    """The URL of a ``kind`` broker that answers, or skip/fail saying why."""
    url = os.environ.get(f"EVENTBUS_TEST_{kind.upper()}_URL") or BROKER_URLS[kind]
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, url
    if not reachable(host, port):
        unavailable(f"{kind} is not reachable at {host}:{port}")
    return url


def namespaced_url(kind: str) -> str:
    """A reachable ``kind`` broker's URL with a namespace of its own in the query string
    (a Redis key prefix, a RabbitMQ exchange, a NATS stream and subject prefix), so runs
    never see each other's messages."""
    base = require_broker(kind)
    namespace = f"eb{uuid.uuid4().hex[:10]}"
    options = {
        "redis": f"prefix={namespace}:",
        "rabbitmq": f"exchange={namespace}",
        "nats": f"stream={namespace.upper()}&prefix={namespace}",
    }[kind]
    return f"{base}{'&' if '?' in base else '?'}{options}"


def via_port(url: str, port: int) -> str:
    """``url`` pointing at 127.0.0.1:``port`` instead (a proxy in front of the server)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port
