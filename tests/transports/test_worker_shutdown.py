"""SIGTERM stops ``eventbus worker`` gracefully: the message in hand is finished and acked.

A worker process takes a message whose handler runs for 1.5 s; SIGTERM arrives while it
runs. The handler finishes, the worker exits 0, and a second worker started afterwards
(with redelivery timeouts of about a second) never sees the message again.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eventbus import EventBus, SQLiteOutbox
from tests.servers import broker_namespace
from tests.transports.slow_events import REGISTRY, ReportRequested

FAST_REDELIVERY = {
    "redis": "&claim_idle=1",
    "rabbitmq": "",  # an unacked message returns as soon as its channel closes
    "nats": "&ack_wait=1",
}


def _ledger(database: Path) -> list[tuple[str, str]]:
    if not database.exists():
        return []
    with sqlite3.connect(database, timeout=10) as connection:
        try:
            return connection.execute("SELECT what, report_id FROM ledger").fetchall()
        except sqlite3.OperationalError:
            return []  # no table yet


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventbus", "worker", "--app", "tests.transports.slow_app:bus"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats"])
def test_sigterm_finishes_the_message_in_hand_and_acks_it(kind: str, tmp_path: Path) -> None:
    with broker_namespace(kind) as space:  # removed from the broker at the end
        _finish_on_sigterm(space.url + FAST_REDELIVERY[kind], space.group(), tmp_path)


def _finish_on_sigterm(url: str, group: str, tmp_path: Path) -> None:
    database = tmp_path / "worker.sqlite3"
    env = {
        **os.environ,
        "EVENTBUS_TRANSPORT_URL": url,
        "EVENTBUS_GROUP": group,
        "SLOW_DATABASE": str(database),
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }
    first = _worker(env)
    outbox = SQLiteOutbox(tmp_path / "publisher.sqlite3", poll_interval=0.1)
    publisher = EventBus(
        registry=REGISTRY, outbox=outbox, transport_url=url, group=group, worker=False
    )
    publisher.subscribe(ReportRequested, name="reports.build", delivery="durable")(
        lambda _event: None
    )
    try:
        time.sleep(1.5)  # the worker's group exists before the publish
        connection = sqlite3.connect(tmp_path / "publisher.sqlite3", isolation_level=None)
        with publisher.transaction(connection):
            publisher.publish(ReportRequested(report_id="r-1"))
        connection.close()
        _wait_for(lambda: ("started", "r-1") in _ledger(database))
        first.send_signal(signal.SIGTERM)
        _, errors = first.communicate(timeout=30)
        assert first.returncode == 0, errors
        assert "finishing the messages in hand" in errors
        assert _ledger(database) == [("started", "r-1"), ("finished", "r-1")]
        second = _worker(env)
        time.sleep(4.0)  # past every redelivery timeout: an unacked message would be back
        second.send_signal(signal.SIGTERM)
        _, errors = second.communicate(timeout=30)
        assert second.returncode == 0, errors
        assert _ledger(database) == [("started", "r-1"), ("finished", "r-1")]
    finally:
        for process in (first,):
            if process.poll() is None:
                process.kill()
                process.communicate()
        publisher.close()
        outbox.close()
