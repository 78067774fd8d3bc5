"""One scenario, five URLs: the same handlers on memory, Redis, RabbitMQ, NATS and Kafka.

For the brokers it runs across processes: a publisher process writes orders to its
outbox and its relay forwards them; a worker process (``eventbus worker``) runs the
handlers, which publish a follow-up event that its own relay forwards back through the
broker to another handler. Only ``EVENTBUS_TRANSPORT_URL`` differs between the runs
(plus a fresh namespace and group, so runs never see each other's messages; both are
removed from the broker at the end).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.servers import broker_namespace

ORDERS = 50


def _ledger(database: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT what, order_id FROM ledger").fetchall()


def _environment(url: str, group: str, database: Path, *, worker: bool = True) -> dict[str, str]:
    return {
        **os.environ,
        "EVENTBUS_WORKER": "true" if worker else "false",
        "EVENTBUS_TRANSPORT_URL": url,
        "EVENTBUS_GROUP": group,
        "SCENARIO_DATABASE": str(database),
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats", "kafka"])
def test_the_same_handlers_across_processes(kind: str, tmp_path: Path) -> None:
    with broker_namespace(kind) as space:
        _run_across_processes(space.url, space.group(), tmp_path)


def _run_across_processes(url: str, group: str, tmp_path: Path) -> None:
    worker_db, publisher_db = tmp_path / "worker.sqlite3", tmp_path / "publisher.sqlite3"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventbus.cli",
            "worker",
            "--app",
            "tests.transports.scenario_app:bus",
        ],
        env=_environment(url, group, worker_db),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # the worker declares its group before the first publish
        subprocess.run(
            [sys.executable, "-m", "tests.transports.scenario_app", "publish", str(ORDERS)],
            env=_environment(url, group, publisher_db, worker=False),
            check=True,
            timeout=120,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if worker_db.exists() and len(_ledger(worker_db)) >= 2 * ORDERS:
                break
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.2)
        time.sleep(0.5)  # a duplicate would show now
        ledger = _ledger(worker_db)
        expected = {(what, f"o-{n}") for n in range(ORDERS) for what in ("charged", "receipt")}
        assert sorted(ledger) == sorted(expected), f"{len(ledger)} rows"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, errors = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, errors = worker.communicate()
    assert worker.returncode == 0, errors
    assert "canary" not in errors


def test_the_same_handlers_on_memory_in_one_process(tmp_path: Path) -> None:
    code = (
        "import tests.transports.scenario_app as app\napp.publish(int(__import__('sys').argv[1]))\n"
    )
    database = tmp_path / "one.sqlite3"
    env = _environment("memory://", "g", database)
    # One process publishes and works: close() drains the worker after the relay.
    subprocess.run([sys.executable, "-c", code, str(ORDERS)], env=env, check=True, timeout=120)
    ledger = _ledger(database)
    assert len(ledger) == 2 * ORDERS
    assert len(set(ledger)) == 2 * ORDERS
