"""Outbox cost: durable publishes and the relay against hand-written SQL, same driver.

One process, one run, interleaved samples (minimum kept), ratios in the same run:

  publish: N durable publishes inside one transaction (N = 1 and 100) against the same
           INSERTs written by hand (json.dumps of the fields, a uuid4, one INSERT each)
           through the same sqlite3 connection. Target: <= 1.3x.
  relay:   delivering R committed rows to an in-process handler against a hand-written
           lease-and-delete loop on the same database, the least a correct relay does:
           lease a batch in one short statement (database clock), run the handlers
           outside any transaction, then delete the batch in another short statement
           fenced by the lease owner (on PostgreSQL through psycopg itself). Same
           durability on both sides (SQLite: WAL, synchronous=NORMAL, the relay's).
           Targets (throughput, ours / hand-written): >= 0.7x on SQLite, >= 0.9x on
           PostgreSQL. A claim-and-delete loop, which holds one write transaction across
           a batch's handlers (a relay must not: on SQLite it blocks every writer of the
           application meanwhile), is reported beside them without a target.

  hot keys: the relay draining a backlog of 50 keys of 2,000, 8,000 and 32,000 rows, and
           of 1,000 keys of 8,000 rows, in seconds per row: to an in-process handler on
           SQLite and on PostgreSQL, and forwarding from PostgreSQL to Redis. Targets: at
           32,000 rows within 1.5x of the cost at 2,000; 50 keys at least half the rate of
           1,000 keys (each claim takes at most one row per key, so 50 keys give a claim
           50 rows where 1,000 keys give it 200).

    python benchmarks/outbox.py [--quick] [--hot-keys with|only|without]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from timing import measure, verdict  # beside this file

import eventbus
from eventbus import EventBus, EventRegistry, SQLiteOutbox

registry = EventRegistry()


@eventbus.event("bench.order_placed", registry=registry)
class OrderPlaced:
    order_id: str
    customer: str
    total: Decimal
    quantity: int


EVENT = OrderPlaced(order_id="o-1", customer="alice", total=Decimal("12.50"), quantity=2)

HAND_TABLE = """
CREATE TABLE IF NOT EXISTS hand_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, envelope_id TEXT NOT NULL, name TEXT NOT NULL,
    destination TEXT NOT NULL, key TEXT, payload BLOB NOT NULL,
    created_at REAL NOT NULL, available_at REAL NOT NULL
)
"""
HAND_INSERT = (
    "INSERT INTO hand_outbox (envelope_id, name, destination, key, payload, created_at, "
    "available_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
LEASED_TABLE = """
CREATE TABLE IF NOT EXISTS hand_leased (
    id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL,
    lease_owner TEXT, lease_until REAL
)
"""
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
SAME_DURABILITY = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL")
"""The hand-written relay loops commit as the relay does (``SQLiteOutbox``'s defaults):
without it they fsync at every commit (FULL) and the relay does not (NORMAL, in WAL)."""


def publish_rows(
    path: Path, per_transaction: int, transactions: int
) -> dict[str, Callable[[], float]]:
    bus = EventBus(registry=registry, outbox=SQLiteOutbox(path), relay=False)
    bus.subscribe(OrderPlaced, name="billing.charge", delivery="durable")(lambda _event: None)
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(HAND_TABLE)
    event = EVENT

    def ours() -> float:
        start = time.perf_counter()
        for _ in range(transactions):
            with bus.transaction(connection):
                for _ in range(per_transaction):
                    bus.publish(event)
        return (time.perf_counter() - start) / (transactions * per_transaction)

    def hand() -> float:
        start = time.perf_counter()
        for _ in range(transactions):
            connection.execute("BEGIN IMMEDIATE")
            for _ in range(per_transaction):
                payload = json.dumps(
                    {
                        "order_id": event.order_id,
                        "customer": event.customer,
                        "total": str(event.total),
                        "quantity": event.quantity,
                    }
                ).encode()
                now = time.time()
                connection.execute(
                    HAND_INSERT,
                    (
                        str(uuid.uuid4()),
                        "bench.order_placed",
                        "billing.charge",
                        None,
                        payload,
                        now,
                        now,
                    ),
                )
            connection.execute("COMMIT")
        return (time.perf_counter() - start) / (transactions * per_transaction)

    return {"hand-written INSERTs": hand, "eventbus durable publish": ours}


def time_relay(outbox: Any, rows: int, seen: list[int], connect: Callable[[], Any]) -> float:
    """Seconds per row for a running bus on ``outbox`` to relay ``rows`` rows committed at
    once to a handler: from the commit (the relay is started and idle before: its start
    is not relay throughput, and the hand-written loops have none) to the last row done."""
    bus = EventBus(registry=registry, outbox=outbox)

    @bus.subscribe(OrderPlaced, name="billing.charge", delivery="durable")
    def charge(event: OrderPlaced) -> None:
        seen.append(event.quantity)

    bus.start()
    bus.drain(timeout=300)
    connection = connect()
    try:
        with bus.transaction(connection):
            for _ in range(rows):
                bus.publish(EVENT)
        # From the commit on (the writes are the publisher's, whenever they are sent):
        # the commit's nudge has the relay claim at once.
        start = time.perf_counter()
        bus.drain(timeout=300)
        elapsed = time.perf_counter() - start
    finally:
        connection.close()
        bus.close()
    return elapsed / rows


def relay_rows(path: Path, rows: int) -> dict[str, Callable[[], float]]:
    """Seconds per delivered row: the relay and the hand-written loops."""
    seen: list[int] = []

    def ours() -> float:
        outbox = SQLiteOutbox(path, poll_interval=0.01, batch=200)
        return time_relay(outbox, rows, seen, lambda: sqlite3.connect(path, isolation_level=None))

    def hand() -> float:
        connection = sqlite3.connect(path, isolation_level=None)
        for pragma in SAME_DURABILITY:
            connection.execute(pragma)
        connection.execute(HAND_TABLE)
        connection.execute("BEGIN IMMEDIATE")
        payload = json.dumps(
            {"order_id": "o-1", "customer": "alice", "total": "12.50", "quantity": 2}
        )
        now = time.time()
        connection.executemany(
            HAND_INSERT,
            [(str(uuid.uuid4()), "bench.order_placed", "h", None, payload.encode(), now, now)]
            * rows,
        )
        connection.execute("COMMIT")
        start = time.perf_counter()
        while True:
            connection.execute("BEGIN IMMEDIATE")
            batch = connection.execute(
                "SELECT id, payload FROM hand_outbox ORDER BY id LIMIT 200"
            ).fetchall()
            if not batch:
                connection.execute("COMMIT")
                break
            for _row_id, body in batch:
                data = json.loads(body)
                OrderPlaced(
                    order_id=data["order_id"],
                    customer=data["customer"],
                    total=Decimal(data["total"]),
                    quantity=data["quantity"],
                )
                seen.append(1)
            connection.execute(
                f"DELETE FROM hand_outbox WHERE id IN ({','.join('?' * len(batch))})",
                [row_id for row_id, _ in batch],
            )
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - start
        connection.close()
        return elapsed / rows

    return {
        "hand-written claim-and-delete": hand,
        "hand-written lease-and-delete": sqlite_lease_and_delete(path, rows, seen),
        "eventbus relay": ours,
    }


def sqlite_lease_and_delete(path: Path, rows: int, seen: list[int]) -> Callable[[], float]:
    """Seconds per delivered row of the least a correct relay does (see the docstring)."""

    def leased() -> float:
        connection = sqlite3.connect(path, isolation_level=None)
        for pragma in SAME_DURABILITY:
            connection.execute(pragma)
        connection.execute(LEASED_TABLE)
        payload = json.dumps(
            {"order_id": "o-1", "customer": "alice", "total": "12.50", "quantity": 2}
        ).encode()
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany("INSERT INTO hand_leased (payload) VALUES (?)", [(payload,)] * rows)
        connection.execute("COMMIT")
        claim = (
            f"UPDATE hand_leased SET lease_owner = 'me', lease_until = {SQLITE_NOW} + 30 "
            "WHERE id IN (SELECT id FROM hand_leased WHERE lease_until IS NULL "
            f"OR lease_until < {SQLITE_NOW} ORDER BY id LIMIT 200) RETURNING id, payload"
        )
        start = time.perf_counter()
        while True:
            connection.execute("BEGIN IMMEDIATE")
            batch = connection.execute(claim).fetchall()
            connection.execute("COMMIT")
            if not batch:
                break
            for _row_id, body in batch:
                data = json.loads(body)
                OrderPlaced(
                    order_id=data["order_id"],
                    customer=data["customer"],
                    total=Decimal(data["total"]),
                    quantity=data["quantity"],
                )
                seen.append(1)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                "DELETE FROM hand_leased WHERE lease_owner = 'me' "
                f"AND id IN ({','.join('?' * len(batch))})",
                [row_id for row_id, _ in batch],
            )
            connection.execute("COMMIT")
        elapsed = time.perf_counter() - start
        connection.close()
        return elapsed / rows

    return leased


PG_URL = os.environ.get(
    "EVENTBUS_BENCH_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PG_HAND = """
CREATE TABLE IF NOT EXISTS hand_outbox (
    id BIGSERIAL PRIMARY KEY, envelope_id VARCHAR(36) NOT NULL, name VARCHAR(200) NOT NULL,
    destination VARCHAR(200) NOT NULL, key VARCHAR(1024), payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, available_at DOUBLE PRECISION NOT NULL
)
"""
PG_INSERT = (
    "INSERT INTO hand_outbox (envelope_id, name, destination, key, payload, created_at, "
    "available_at) VALUES (%s, %s, %s, %s, %s, %s, %s)"
)
PG_LEASED = """
CREATE TABLE IF NOT EXISTS hand_leased (
    id BIGSERIAL PRIMARY KEY, payload BYTEA NOT NULL,
    lease_owner VARCHAR(200), lease_until DOUBLE PRECISION
)
"""
PG_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


def postgres_engine() -> Any:
    """An engine on the loopback PostgreSQL, or None when it is not there."""
    try:
        import sqlalchemy as sa
    except ImportError:
        return None
    engine = sa.create_engine(PG_URL, pool_size=4)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception:
        engine.dispose()
        return None
    return engine


def postgres_publish_rows(
    engine: Any, prefix: str, per_transaction: int, transactions: int
) -> dict[str, Callable[[], float]]:
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
    from sqlalchemy.orm import Session

    outbox = SQLAlchemyOutbox(engine, prefix=prefix)
    bus = EventBus(registry=registry, outbox=outbox, relay=False)
    bus.subscribe(OrderPlaced, name="billing.charge", delivery="durable")(lambda _event: None)
    with engine.begin() as connection:
        connection.exec_driver_sql(PG_HAND.replace("hand_outbox", f"{prefix}_hand"))
    insert = PG_INSERT.replace("hand_outbox", f"{prefix}_hand")
    event = EVENT

    def ours() -> float:
        start = time.perf_counter()
        for _ in range(transactions):
            with Session(engine) as session, bus.transaction(session):
                for _ in range(per_transaction):
                    bus.publish(event)
        return (time.perf_counter() - start) / (transactions * per_transaction)

    def hand() -> float:
        # Through a Session too: the application's unit of work is one in both rows.
        start = time.perf_counter()
        for _ in range(transactions):
            with Session(engine) as session, session.begin():
                connection = session.connection()
                for _ in range(per_transaction):
                    payload = json.dumps(
                        {
                            "order_id": event.order_id,
                            "customer": event.customer,
                            "total": str(event.total),
                            "quantity": event.quantity,
                        }
                    ).encode()
                    now = time.time()
                    connection.exec_driver_sql(
                        insert,
                        (str(uuid.uuid4()), "bench.order_placed", "h", None, payload, now, now),
                    )
        return (time.perf_counter() - start) / (transactions * per_transaction)

    return {"hand-written INSERTs": hand, "eventbus durable publish": ours}


def postgres_relay_rows(engine: Any, prefix: str, rows: int) -> dict[str, Callable[[], float]]:
    """Seconds per delivered row on PostgreSQL: the relay and the hand-written loops."""
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox
    from sqlalchemy.orm import Session

    hand_table = f"{prefix}_hand"
    seen: list[int] = []

    def ours() -> float:
        outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.01, batch=200)
        return time_relay(outbox, rows, seen, lambda: Session(engine))

    def hand() -> float:
        payload = json.dumps(
            {"order_id": "o-1", "customer": "alice", "total": "12.50", "quantity": 2}
        ).encode()
        now = time.time()
        with engine.begin() as connection:
            connection.exec_driver_sql(PG_HAND.replace("hand_outbox", hand_table))
            connection.exec_driver_sql(
                PG_INSERT.replace("hand_outbox", hand_table),
                [(str(uuid.uuid4()), "bench.order_placed", "h", None, payload, now, now)] * rows,
            )
        start = time.perf_counter()
        while True:
            with engine.begin() as connection:
                batch = connection.exec_driver_sql(
                    f"SELECT id, payload FROM {hand_table} ORDER BY id LIMIT 200 "
                    "FOR UPDATE SKIP LOCKED"
                ).all()
                if not batch:
                    break
                for _row_id, body in batch:
                    data = json.loads(bytes(body))
                    OrderPlaced(
                        order_id=data["order_id"],
                        customer=data["customer"],
                        total=Decimal(data["total"]),
                        quantity=data["quantity"],
                    )
                    seen.append(1)
                connection.exec_driver_sql(
                    f"DELETE FROM {hand_table} WHERE id = ANY(%s)",
                    ([row_id for row_id, _ in batch],),
                )
        return (time.perf_counter() - start) / rows

    return {
        "hand-written claim-and-delete": hand,
        "hand-written lease-and-delete": postgres_lease_and_delete(engine, prefix, rows, seen),
        "eventbus relay": ours,
    }


def postgres_lease_and_delete(
    engine: Any, prefix: str, rows: int, seen: list[int]
) -> Callable[[], float]:
    """Seconds per delivered row of the least a correct relay does, through psycopg."""
    leased_table = f"{prefix}_leased"

    def leased() -> float:
        # Through psycopg itself: the least a correct relay does, with no layer between.
        payload = json.dumps(
            {"order_id": "o-1", "customer": "alice", "total": "12.50", "quantity": 2}
        ).encode()
        with engine.begin() as connection:
            connection.exec_driver_sql(PG_LEASED.replace("hand_leased", leased_table))
            connection.exec_driver_sql(
                f"INSERT INTO {leased_table} (payload) VALUES (%s)", [(payload,)] * rows
            )
        claim = (
            f"WITH c AS MATERIALIZED (SELECT id FROM {leased_table} WHERE lease_until IS NULL "
            f"OR lease_until < {PG_NOW} ORDER BY id LIMIT 200 FOR UPDATE SKIP LOCKED) "
            f"UPDATE {leased_table} AS t SET lease_owner = 'me', lease_until = {PG_NOW} + 30 "
            "FROM c WHERE t.id = c.id RETURNING t.id, t.payload"
        )
        delete = f"DELETE FROM {leased_table} WHERE lease_owner = 'me' AND id = ANY(%s)"
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            start = time.perf_counter()
            while True:
                with driver.transaction():
                    batch = driver.execute(claim).fetchall()
                if not batch:
                    break
                for _row_id, body in batch:
                    data = json.loads(body)
                    OrderPlaced(
                        order_id=data["order_id"],
                        customer=data["customer"],
                        total=Decimal(data["total"]),
                        quantity=data["quantity"],
                    )
                    seen.append(1)
                with driver.transaction():
                    driver.execute(delete, ([row_id for row_id, _ in batch],))
            elapsed = time.perf_counter() - start
        finally:
            raw.close()
        return elapsed / rows

    return leased


def postgres_drop(engine: Any, prefix: str) -> None:
    with engine.begin() as connection:
        for table in ("outbox", "inbox", "hand", "leased"):
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {prefix}_{table}")


# -- hot keys: a backlog of few keys ---------------------------------------------------------

HOT_KEYS = 50
MANY_KEYS = 1000
HOT_BACKLOGS = (2000, 8000, 32000)
REDIS_URL = os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def hot_key_case(
    kind: str, rows: int, keys: int, *, folder: Path, engine: Any
) -> Callable[[], float]:
    """Seconds per row for the relay to drain ``rows`` committed rows over ``keys`` keys:
    ``kind`` is "sqlite" or "postgresql" (in-process delivery) or "postgresql->redis"
    (forwarding). Each sample writes the backlog again, then times a fresh relay."""
    made = f"hot{uuid.uuid4().hex[:8]}"
    database = folder / f"{made}.sqlite3"
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={made}:"

    def outbox(**options: Any) -> Any:
        if kind == "sqlite":
            return SQLiteOutbox(database, **options)
        from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

        return SQLAlchemyOutbox(engine, prefix=made, **options)

    def bus(store: Any, *, relay: bool) -> EventBus:
        forward: dict[str, Any] = (
            {"transport_url": url, "worker": False} if kind.endswith("redis") else {}
        )
        made_bus = EventBus(registry=registry, outbox=store, relay=relay, **forward)
        made_bus.subscribe(OrderPlaced, name="billing.charge", delivery="durable")(
            lambda _event: None
        )
        return made_bus

    def sample() -> float:
        writer = bus(outbox(), relay=False)
        if kind == "sqlite":
            connection = sqlite3.connect(database, isolation_level=None)
            with writer.transaction(connection):
                for number in range(rows):
                    writer.publish(EVENT, key=f"k{number % keys}")
            connection.close()
        else:
            from sqlalchemy.orm import Session

            with Session(engine) as session, writer.transaction(session):
                for number in range(rows):
                    writer.publish(EVENT, key=f"k{number % keys}")
        writer.close()
        store = outbox(poll_interval=0.01, batch=200)
        relay = bus(store, relay=True)
        start = time.perf_counter()
        relay.start()
        relay.drain(timeout=900)
        elapsed = time.perf_counter() - start
        left = store.status().pending
        relay.close()
        assert left == 0, f"{left} rows left"
        return elapsed / rows

    def cleanup() -> None:
        if kind != "sqlite":
            with engine.begin() as connection:
                for table in ("outbox", "inbox"):
                    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {made}_{table}")
        if kind.endswith("redis"):
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys_made = list(client.scan_iter(f"{made}:*"))
            if keys_made:
                client.delete(*keys_made)
            client.close()

    hot_cleanups.append(cleanup)
    return sample


hot_cleanups: list[Callable[[], None]] = []


def redis_answers() -> bool:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception:
        return False
    return True


def hot_keys(engine: Any, *, quick: bool, samples: int, missed: list[str]) -> None:
    """Per-row cost of draining a backlog of 50 keys as it grows (target: the largest
    within 1.5x of the smallest), and against 1,000 keys (target: at least half their rate)."""
    backlogs = (300, 600, 1200) if quick else HOT_BACKLOGS
    middle = backlogs[1]
    kinds = ["sqlite"]
    if engine is not None:
        kinds.append("postgresql")
        if redis_answers():
            kinds.append("postgresql->redis")
        else:
            print(f"(no Redis at {REDIS_URL}: forwarding is left out)")
    print(
        f"\n{'hot keys: relay drains':<26} {'keys':>5} {'rows':>6} {'us/row':>9} {'ratio':>6} "
        f"{'target':>8}"
    )
    with tempfile.TemporaryDirectory() as folder:
        try:
            for kind in kinds:
                cases = {
                    (HOT_KEYS, rows): hot_key_case(
                        kind, rows, HOT_KEYS, folder=Path(folder), engine=engine
                    )
                    for rows in backlogs
                }
                cases[(MANY_KEYS, middle)] = hot_key_case(
                    kind, middle, MANY_KEYS, folder=Path(folder), engine=engine
                )
                kept: dict[str, list[float]] = {}
                best = measure(
                    {f"{keys} {rows}": case for (keys, rows), case in cases.items()},
                    samples,
                    kept=kept,
                    warm_up=False,
                )
                smallest = best[f"{HOT_KEYS} {backlogs[0]}"]
                largest = best[f"{HOT_KEYS} {backlogs[-1]}"]
                growth = largest / smallest
                rate = best[f"{MANY_KEYS} {middle}"] / best[f"{HOT_KEYS} {middle}"]
                for (keys, rows), _ in cases.items():
                    seconds = best[f"{keys} {rows}"]
                    if keys == HOT_KEYS and rows == backlogs[-1]:
                        shown, target = f"{growth:6.2f}", f"<= 1.5 of {backlogs[0]}"
                    elif keys == MANY_KEYS:
                        shown, target = f"{rate:6.2f}", f">= 0.5 of {HOT_KEYS}"
                    else:
                        shown, target = "", ""
                    print(
                        f"{kind:<26} {keys:>5} {rows:>6} {seconds * 1e6:>9.1f} {shown:>6} "
                        f"{target:>8}"
                    )
                for name, values in kept.items():
                    listed = ", ".join(f"{value * 1e6:.1f}" for value in values)
                    print(f"{'':<26}   samples of {name} (keys rows): {listed}")
                if growth > 1.5:
                    missed.append(
                        f"{kind}, {HOT_KEYS} keys: {growth:.2f}x from "
                        f"{backlogs[0]} to {backlogs[-1]} rows"
                    )
                if rate < 0.5:
                    missed.append(
                        f"{kind}, {HOT_KEYS} keys at {middle} rows: {rate:.2f}x "
                        f"the rate of {MANY_KEYS} keys"
                    )
        finally:
            for cleanup in hot_cleanups:
                cleanup()
            hot_cleanups.clear()


def report(case: str, best: dict[str, float], ratio: float, target: str) -> None:
    """Print a case's rows: the baseline at 1.00, eventbus with its ratio and target."""
    for name, seconds in best.items():
        ours = name.startswith("eventbus")
        shown, mark = (ratio, target) if ours else (1.0, "")
        print(f"{case:<34} {name:<32} {seconds * 1e6:>9.1f} {shown:>6.2f} {mark:>8}")


def report_relay(
    case: str, best: dict[str, float], samples: dict[str, list[float]], target: float
) -> float:
    """Print a relay case; returns the judged throughput ratio (against lease-and-delete).

    Throughputs are relative to the lease-and-delete loop; claim-and-delete is shown for
    scale, without a target."""
    hand = best["hand-written lease-and-delete"]
    for name, seconds in best.items():
        ours = name.startswith("eventbus")
        mark = f">= {target}" if ours else ""
        print(f"{case:<34} {name:<32} {seconds * 1e6:>9.1f} {hand / seconds:>6.2f} {mark:>8}")
    for name, values in samples.items():
        shown = ", ".join(f"{value * 1e6:.1f}" for value in values)
        print(f"{'':<34}   samples of {name}: {shown}")
    return hand / best["eventbus relay"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, for a smoke run")
    parser.add_argument(
        "--relay-samples", type=int, default=0, help="samples of the relay rows (default: 3)"
    )
    parser.add_argument(
        "--hot-keys",
        choices=("with", "only", "without"),
        default="with",
        help="the hot-key drains (50 keys at 2k, 8k, 32k rows; 1,000 keys at 8k): "
        "with the rest (default), only them, or without them",
    )
    parser.add_argument(
        "--hot-samples", type=int, default=0, help="samples of the hot-key drains (default: 2)"
    )
    args = parser.parse_args()
    samples = 2 if args.quick else 7
    relay_samples = args.relay_samples or max(1, samples // 2)
    print(f"Python {sys.version.split()[0]}, SQLite {sqlite3.sqlite_version}, {samples} samples\n")
    missed: list[str] = []
    if args.hot_keys != "only":
        the_rest(args, samples, relay_samples, missed)
    if args.hot_keys != "without":
        engine = postgres_engine()
        if engine is None:
            print(f"\n(no PostgreSQL at {PG_URL}: its hot-key rows are left out)")
        hot_samples = args.hot_samples or (1 if args.quick else 2)
        try:
            hot_keys(engine, quick=args.quick, samples=hot_samples, missed=missed)
        finally:
            if engine is not None:
                engine.dispose()
    return verdict(missed)


def the_rest(args: Any, samples: int, relay_samples: int, missed: list[str]) -> None:
    """Durable publishes and the relay against hand-written SQL."""
    print(f"{'case':<34} {'row':<32} {'us/event':>9} {'ratio':>6} {'target':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for per_transaction, transactions in (
            (1, 200 if args.quick else 1000),
            (100, 5 if args.quick else 30),
        ):
            path = Path(folder) / f"publish-{per_transaction}.sqlite3"
            best = measure(publish_rows(path, per_transaction, transactions), samples)
            ratio = best["eventbus durable publish"] / best["hand-written INSERTs"]
            case = f"sqlite publish, {per_transaction}/transaction"
            report(case, best, ratio, "<= 1.3")
            if ratio > 1.3:
                missed.append(f"{case}: {ratio:.2f}x")
        path = Path(folder) / "relay.sqlite3"
        kept: dict[str, list[float]] = {}
        best = measure(relay_rows(path, 500 if args.quick else 5000), relay_samples, kept=kept)
        case = "sqlite relay to a handler"
        throughput = report_relay(case, best, kept, 0.7)
        if throughput < 0.7:
            missed.append(f"sqlite relay throughput: {throughput:.2f}x")
    engine = postgres_engine()
    if engine is None:
        print(f"\n(no PostgreSQL at {PG_URL}: its rows are left out)")
    else:
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        try:
            for per_transaction, transactions in (
                (1, 100 if args.quick else 500),
                (100, 3 if args.quick else 15),
            ):
                best = measure(
                    postgres_publish_rows(engine, prefix, per_transaction, transactions), samples
                )
                ratio = best["eventbus durable publish"] / best["hand-written INSERTs"]
                case = f"postgresql publish, {per_transaction}/txn"
                report(case, best, ratio, "<= 1.3")
                if ratio > 1.3:
                    missed.append(f"{case}: {ratio:.2f}x")
            relay_count = 500 if args.quick else 3000
            kept = {}
            best = measure(
                postgres_relay_rows(engine, prefix, relay_count), relay_samples, kept=kept
            )
            case = "postgresql relay to a handler"
            throughput = report_relay(case, best, kept, 0.9)
            if throughput < 0.9:
                missed.append(f"postgresql relay throughput: {throughput:.2f}x")
        finally:
            postgres_drop(engine, prefix)
            engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
