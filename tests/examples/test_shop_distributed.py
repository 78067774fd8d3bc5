"""The shop example, distributed by configuration only: the same code, workers elsewhere.

For each broker, on PostgreSQL: two ``eventbus worker --app examples.shop.app:bus``
processes, then the scenario in a third with ``EVENTBUS_WORKER=false``, so every durable
handler runs in a worker. Only settings differ from the embedded run: the transport URL
(with a fresh namespace), a fresh consumer group, a fresh schema, all removed at the end.
The summary must tell the same story, its event flow complete across the processes; the
workers stop on SIGTERM and exit 0.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.examples.shop_story import (
    ROOT,
    check_story,
    flow_by_order,
    outcomes_by_event,
    run_shop,
    scenario_pid,
    shop_environment,
)
from tests.servers import BrokerNamespace, broker_namespace

READY = "eventbus: worker for group"
WORKERS = 2


@attrs.define
class Worker:
    process: subprocess.Popen[str]
    lines: list[str] = attrs.Factory(list)
    ready: threading.Event = attrs.Factory(threading.Event)

    def read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith(READY):
                self.ready.set()
        self.ready.set()  # it ended: whoever waits sees why

    @property
    def log(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def workers(environment: dict[str, str], count: int) -> Iterator[list[Worker]]:
    """``count`` workers, started together (each builds the shop: its tables are created
    by one at a time), yielded once each is running. Killed on the way out if still up."""
    started: list[Worker] = []
    readers: list[threading.Thread] = []
    try:
        for _ in range(count):
            process = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "worker", "--app", "examples.shop.app:bus"],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            worker = Worker(process)
            started.append(worker)
            reader = threading.Thread(target=worker.read, daemon=True)
            reader.start()
            readers.append(reader)
        for worker in started:
            assert worker.ready.wait(30), f"the worker did not start:\n{worker.log}"
            assert worker.process.poll() is None, f"the worker ended at once:\n{worker.log}"
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(10)
        for reader in readers:
            reader.join(10)
        for worker in started:
            if worker.process.stderr is not None:
                worker.process.stderr.close()


@pytest.fixture
def space(broker: str) -> Iterator[BrokerNamespace]:
    with broker_namespace(broker) as made:
        yield made


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("broker", ["redis", "rabbitmq", "nats", "kafka"])
def test_workers_in_other_processes_tell_the_same_story(
    broker: str, postgresql_schema: str, space: BrokerNamespace, tmp_path: Path
) -> None:
    data_dir = tmp_path / "shop"
    settings = {
        "SHOP_DATABASE_URL": postgresql_schema,
        "EVENTBUS_TRANSPORT_URL": space.url,
        "EVENTBUS_GROUP": space.group("shop-"),
    }
    with workers(shop_environment(data_dir, **settings), WORKERS) as started:
        out = run_shop(data_dir, settings={**settings, "EVENTBUS_WORKER": "false"})
        for worker in started:
            worker.process.send_signal(signal.SIGTERM)
        for worker in started:
            try:
                worker.process.wait(20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"a worker did not stop on SIGTERM:\n{worker.log}")
        for worker in started:
            assert worker.process.returncode == 0, worker.log
            assert "finishing the messages in hand" in worker.log

    check_story(out)
    assert f"Durable events travel through <{type_name(broker)}" in out

    # Every durable handler ran in a worker: none in the scenario's own process, which
    # only published (and ran the inline check and the after-commit handlers of what it
    # published itself).
    here = scenario_pid(out)
    worker_pids = {worker.process.pid for worker in started}
    outcomes = outcomes_by_event(out)
    flows = flow_by_order(out)
    for order_id, (_, events) in flows.items():
        for event_id, _, _, name in events:
            for handler, what, pid in outcomes[event_id]:
                assert pid != here  # [pid N] is shown only for other processes
                if name == "shop.order_placed" and order_id != "o-1004":
                    where = worker_pids if handler == "inventory.reserve_stock" else {None}
                    assert pid in where, (order_id, handler, what, pid)

    # Causation across processes: o-1001's order was placed here; the worker that
    # reserved its stock published StockReserved caused by it, and so on down the chain,
    # each step handled by a worker.
    _, confirmed = flows["o-1001"]
    for (before, *_), (_, cause, _, name) in itertools.pairwise(confirmed):
        assert cause == before, name
        handled_by = {pid for _, _, pid in outcomes[before]} - {None}
        assert handled_by, f"{before} was handled in another process"
        assert handled_by <= worker_pids
    retried = [
        what
        for handler, what, pid in outcomes[confirmed[4][0]]
        if handler == "notifications.send_confirmation" and pid in worker_pids
    ]
    assert retried[0].startswith("attempt 1 failed (MailServerBusyError)"), retried
    assert retried[-1] == "ok", retried


def type_name(broker: str) -> str:
    return {
        "redis": "RedisStreamsTransport",
        "rabbitmq": "RabbitMQTransport",
        "nats": "NATSTransport",
        "kafka": "KafkaTransport",
    }[broker]
