"""The relay and the worker resume by themselves when the broker connection goes away.

A publisher bus (outbox + relay, no worker) and a worker bus (its own database: inbox and
the ledger its connection-taking handler writes) talk through a broker behind a loopback
proxy that the test controls. While 600 events are committed, the proxy drops every
connection again and again, and once refuses connections for a while (a broker that is
down). Judged by a ledger: every committed event is applied exactly once, nothing is
left in the outbox, and no row is left claimed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import tenacity

from eventbus import EventBus, EventRegistry, RetryPolicy, SQLiteOutbox, event
from tests.proxy import TCPProxy, tcp_proxy
from tests.servers import broker_namespace, port_of, via_port

pytestmark = pytest.mark.slow

REGISTRY = EventRegistry()
EVENTS = 600


@event("faults.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@pytest.fixture(params=["redis", "rabbitmq", "nats", "kafka"])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, TCPProxy]]:
    """The broker's URL (in a namespace of the test's own, removed at the end) through a
    proxy the test controls, the consumer group, and the proxy.

    Kafka clients connect to the address the broker advertises, not to the one they were
    given: the test runs a Kafka test broker of its own that advertises the proxy's port.
    """
    if request.param == "kafka":
        with own_kafka_behind_a_proxy() as (url, proxy):
            yield f"{url}&prefix=faults", "g", proxy
        return
    with broker_namespace(request.param) as space, tcp_proxy(port_of(space.url)) as proxy:
        yield via_port(space.url, proxy.port), space.group(), proxy


@contextlib.contextmanager
def own_kafka_behind_a_proxy() -> Iterator[tuple[str, TCPProxy]]:
    pytest.importorskip("aiokafka")
    from tests.kafka_broker import own_broker

    proxies: list[TCPProxy] = []

    def through_a_proxy(port: int) -> int:
        proxies.append(TCPProxy(port).start())
        return proxies[0].port

    try:
        with own_broker(advertised=through_a_proxy) as kafka:
            yield kafka.url, proxies[0]
    finally:
        for proxy in proxies:
            proxy.stop()


def _chaos(proxy: TCPProxy, stop: threading.Event) -> None:
    """Drop every connection every 0.7 s; once, refuse connections for 2 s."""
    rounds = 0
    while not stop.wait(0.7):
        rounds += 1
        if rounds == 4:
            proxy.pause()
            time.sleep(2.0)
            proxy.resume()
        else:
            proxy.cut()


def _applied(database: Path) -> list[int]:
    with closing(sqlite3.connect(database)) as reader:
        return [row[0] for row in reader.execute("SELECT number FROM applied")]


def _buses(url: str, group: str, tmp_path: Path) -> tuple[EventBus, EventBus]:
    """A publisher (outbox and relay, no worker) and a worker (its own database)."""
    retry = RetryPolicy(stop=tenacity.stop_after_attempt(50), wait=tenacity.wait_fixed(0.05))
    publisher_db, worker_db = tmp_path / "publisher.db", tmp_path / "worker.db"
    publisher_outbox = SQLiteOutbox(publisher_db, poll_interval=0.1)
    worker_outbox = SQLiteOutbox(worker_db, poll_interval=0.1)
    with closing(sqlite3.connect(worker_db)) as setup, setup:
        setup.execute("CREATE TABLE applied (number INTEGER NOT NULL)")
    publisher = EventBus(
        registry=REGISTRY, outbox=publisher_outbox, transport_url=url, group=group, worker=False
    )
    worker = EventBus(
        registry=REGISTRY,
        outbox=worker_outbox,
        transport_url=url,
        group=group,
        relay=False,
        retry=retry,
    )

    @worker.subscribe(delivery="durable", name="ledger.apply")
    def apply(event: OrderPlaced, connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO applied VALUES (?)", (event.number,))

    @publisher.subscribe(delivery="durable", name="ledger.apply")
    def elsewhere(event: OrderPlaced) -> None:  # the publisher only needs the route
        pytest.fail("the publisher runs no worker")

    return publisher, worker


def test_nothing_is_lost_while_the_connection_keeps_dropping(
    broker: tuple[str, str, TCPProxy], tmp_path: Path
) -> None:
    url, group, proxy = broker
    publisher, worker = _buses(url, group, tmp_path)
    publisher_db, worker_db = tmp_path / "publisher.db", tmp_path / "worker.db"
    publisher_outbox = publisher.outbox
    assert isinstance(publisher_outbox, SQLiteOutbox)
    worker.start()
    time.sleep(1.0)  # the worker's group exists before the first publish
    stop = threading.Event()
    chaos = threading.Thread(target=_chaos, args=(proxy, stop), daemon=True)
    chaos.start()
    connection = sqlite3.connect(publisher_db, isolation_level=None)
    committed: list[int] = []
    try:
        for number in range(EVENTS):
            with publisher.transaction(connection):
                publisher.publish(OrderPlaced(number=number), key=f"k{number % 20}")
            committed.append(number)
            if number % 50 == 0:
                time.sleep(0.05)
        calm_at = time.monotonic() + 10  # chaos goes on for a while after the last commit
        deadline = time.monotonic() + 120
        applied: list[int] = []
        while time.monotonic() < deadline:
            if time.monotonic() > calm_at:
                stop.set()  # then the backlog drains on a healthy connection
            applied = _applied(worker_db)
            if len(set(applied)) >= EVENTS and stop.is_set():
                break
            time.sleep(0.2)
        stop.set()
        time.sleep(1.0)
        applied = _applied(worker_db)
        status = publisher_outbox.status()
        lost = sorted(set(committed) - set(applied))
        duplicates = len(applied) - len(set(applied))
        print(
            f"\nledger: committed {len(committed)}, applied {len(applied)}, distinct "
            f"{len(set(applied))}, lost {len(lost)}, duplicate effects {duplicates}, "
            f"outbox pending {status.pending}, in flight {status.in_flight}, "
            f"proxy connections {proxy.connections}"
        )
        assert lost == []
        assert duplicates == 0
        assert status.pending == 0
        assert status.in_flight == 0
        assert proxy.connections > 4  # the clients did reconnect, many times
    finally:
        stop.set()
        connection.close()
        for bus in (publisher, worker):
            bus.close()
            if bus.outbox is not None:
                bus.outbox.close()
