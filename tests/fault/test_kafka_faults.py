"""Faults of the Kafka transport, judged by a ledger: workers killed by SIGKILL, poison.

A worker is ``eventbus worker --app tests.fault.kafka_app:bus`` in a child process, with
its own SQLite file: its handler writes an effect row with its inbox mark (exactly once)
and dies on a poison event. The test kills it by pid (SIGKILL, never a graceful stop) and
starts it again. Ledger: committed, applied, distinct, lost, duplicate effects, per-key
inversions (a key's sequence numbers must be applied in order), dead letters.

Run with ``-s`` to see the ledgers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventbus import EventBus, EventRegistry, SQLiteDeadLetterStore, SQLiteOutbox, event
from eventbus.testing import capture_events
from tests.servers import BrokerNamespace, broker_namespace

pytest.importorskip("aiokafka")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
REGISTRY = EventRegistry()
EVENTS = 1_500
KEYS = 10
KILLS = 8


@event("fault.keyed", registry=REGISTRY)  # the same event as tests/fault/kafka_app.py
class Keyed:
    key: str
    seq: int
    poison: bool = False


@pytest.fixture
def space() -> Iterator[BrokerNamespace]:
    with broker_namespace("kafka") as made:
        yield made


class Workers:
    """The worker processes of one test, started and killed by pid."""

    def __init__(self, space: BrokerNamespace, database: Path, **settings: str) -> None:
        self.environment = {
            **os.environ,
            "EVENTBUS_TRANSPORT_URL": space.url,
            "EVENTBUS_GROUP": space.group(),
            "FAULT_DATABASE": str(database),
            "PYTHONPATH": str(REPO),
            **settings,
        }
        self.database = database
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "eventbus", "worker", "--app", "tests.fault.kafka_app:bus"],
            cwd=REPO,
            env=self.environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM: the worker finishes what it holds and exits 0."""
        if not self.alive():
            return None
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def effects(self) -> list[tuple[str, int]]:
        if not self.database.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.database, timeout=10)) as reader:
            try:
                return reader.execute("SELECT key, seq FROM effects ORDER BY rowid").fetchall()
            except sqlite3.OperationalError:  # not made yet
                return []

    def letters(self) -> list[tuple[str, str]]:
        store = SQLiteDeadLetterStore(self.database)
        try:
            return [(letter.handler, letter.message) for letter in store.list()]
        finally:
            store.close()


@contextlib.contextmanager
def workers(space: BrokerNamespace, database: Path, **settings: str) -> Iterator[Workers]:
    made = Workers(space, database, **settings)
    try:
        yield made
    finally:
        made.kill()


def inversions(applied: list[tuple[str, int]]) -> int:
    """Effects applied after a later one of the same key."""
    latest: dict[str, int] = {}
    count = 0
    for key, seq in applied:
        if seq < latest.get(key, -1):
            count += 1
        latest[key] = max(seq, latest.get(key, -1))
    return count


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.timeout(600)  # eight takeovers, each waiting out a rebalance at the broker
def test_a_worker_killed_again_and_again_loses_nothing_repeats_nothing_reorders_nothing(
    space: BrokerNamespace, tmp_path: Path
) -> None:
    publisher_db = tmp_path / "publisher.sqlite3"
    outbox = SQLiteOutbox(publisher_db, poll_interval=0.05)
    publisher = EventBus(
        registry=REGISTRY, outbox=outbox, transport_url=space.url, group="unused", worker=False
    )

    @publisher.subscribe(delivery="durable", name="fault.apply")
    def route(event: Keyed) -> None:  # the publisher only needs the route
        pytest.fail("the publisher runs no worker")

    with workers(space, tmp_path / "worker.sqlite3") as running:
        running.start()
        connection = sqlite3.connect(publisher_db, isolation_level=None)
        committed: list[tuple[str, int]] = []
        kills = 0
        try:
            for number in range(EVENTS):
                key, seq = f"k{number % KEYS}", number // KEYS
                with publisher.transaction(connection):
                    publisher.publish(Keyed(key=key, seq=seq), key=key)
                committed.append((key, seq))
            # Kill the worker whenever it has made progress since it started, so every
            # kill lands while it is handling messages.
            step = EVENTS // (KILLS + 2)
            while kills < KILLS:
                before = len(running.effects())
                moved = wait_until(lambda b=before: len(running.effects()) >= b + step, 90)
                assert moved, f"no progress after {kills} kills: {len(running.effects())}"
                running.kill()
                kills += 1
                running.start()
            assert wait_until(lambda: len(set(running.effects())) >= EVENTS, 120)
            time.sleep(1.0)  # a duplicate would show now
            assert running.stop() == 0
            applied = running.effects()
            letters = running.letters()
        finally:
            connection.close()
            publisher.close()
            outbox.close()
    lost = set(committed) - set(applied)
    duplicates = len(applied) - len(set(applied))
    inverted = inversions(applied)
    print(
        f"\nkafka ledger: committed {len(committed)}, applied {len(applied)}, distinct "
        f"{len(set(applied))}, lost {len(lost)}, duplicate effects {duplicates}, per-key "
        f"inversions {inverted}, dead letters {len(letters)}, kills {kills}"
    )
    assert kills == KILLS
    assert lost == set()
    assert duplicates == 0
    assert inverted == 0
    assert letters == []  # nothing innocent counted past max_deliveries


def test_poison_and_garbage_from_a_raw_client_are_dead_lettered_once_and_the_worker_goes_on(
    space: BrokerNamespace, tmp_path: Path
) -> None:
    max_deliveries = 3
    with workers(
        space, tmp_path / "worker.sqlite3", EVENTBUS_MAX_DELIVERIES=str(max_deliveries)
    ) as running:
        running.start()
        good = [Keyed(key="p", seq=0), Keyed(key="q", seq=0)]
        asyncio.run(_produce(space, [*good, b"\x00garbage: not an envelope"]))
        assert wait_until(lambda: len(running.effects()) == 2 and running.letters(), 60)
        time.sleep(1.0)  # their offsets are committed (commit_interval): settled for good
        poison = Keyed(key="p", seq=1, poison=True)
        after = [Keyed(key="p", seq=2), Keyed(key="q", seq=1)]
        asyncio.run(_produce(space, [poison, *after]))
        deaths = 0
        deadline = time.monotonic() + 180
        while len(running.letters()) < 2 and time.monotonic() < deadline:
            if not running.alive():
                deaths += 1  # the poison killed it: start it again
                running.start()
            time.sleep(0.1)
        assert wait_until(lambda: len(running.effects()) == 4, 60)
        time.sleep(1.0)
        assert running.alive()
        applied = running.effects()
        letters = running.letters()
        assert running.stop() == 0
    print(f"\nkafka poison: deaths {deaths}, letters {letters}, applied {applied}")
    assert deaths == max_deliveries  # delivered 1, 2, 3 times: dead-lettered on the 4th
    assert sorted(applied) == [("p", 0), ("p", 2), ("q", 0), ("q", 1)]
    assert applied.index(("p", 0)) < applied.index(("p", 2))
    assert len(letters) == 2
    assert {handler for handler, _ in letters} == {"@worker"}
    assert sum(f"max_deliveries={max_deliveries}" in message for _, message in letters) == 1


async def _produce(space: BrokerNamespace, items: list[Keyed | bytes]) -> None:
    """Send with aiokafka itself, as another program would: envelopes the codec wrote,
    keyed like the transport keys them, and raw bytes."""
    from aiokafka import AIOKafkaProducer

    bus = EventBus(registry=REGISTRY)
    with capture_events(bus) as captured:
        for item in items:
            if not isinstance(item, bytes):
                bus.publish(item, key=item.key)
    envelopes = iter(captured.envelopes)
    servers = space.base_url.split("//", 1)[1].split("?", 1)[0]
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        for item in items:
            if isinstance(item, bytes):
                await producer.send_and_wait(f"{space.name}.fault.keyed", item)
                continue
            envelope = next(envelopes)
            await producer.send_and_wait(
                f"{space.name}.fault.keyed", bus.codec.encode(envelope), key=item.key.encode()
            )
    finally:
        await producer.stop()
        bus.close()
