"""SIGTERM stops ``eventbus worker`` gracefully: the message in hand is finished and acked.

A worker process takes a message whose handler runs for 1.5 s; SIGTERM arrives while it
runs. The handler finishes, the worker exits 0, and a second worker started afterwards
(with redelivery timeouts of about a second) never sees the message again.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from eventbus import EventBus, SQLiteOutbox
from tests.servers import broker_namespace
from tests.transports.slow_events import REGISTRY, ReportRequested

FAST_REDELIVERY = {
    "redis": "&claim_idle=1",
    "rabbitmq": "",  # an unacked message returns as soon as its channel closes
    "nats": "&ack_wait=1",
    "kafka": "",  # a partition let go is resumed from its committed offset
}


def _ledger(database: Path) -> list[tuple[str, str]]:
    if not database.exists():
        return []
    with closing(sqlite3.connect(database, timeout=10)) as connection:
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


@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats", "kafka"])
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
        with closing(connection), publisher.transaction(connection):
            publisher.publish(ReportRequested(report_id="r-1"))
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


def test_sigterm_stops_a_worker_that_cannot_reach_its_broker_at_once(tmp_path: Path) -> None:
    """Before: the stop waited for the reconnect wait in progress and the next attempts,
    logging "trying again in 16 s" after "finishing the messages in hand", up to the
    shutdown timeout (10 s). Now the stop ends the wait at once and says nothing more
    about retrying."""
    # A port bound but never listening: every connection is refused, and nothing else
    # can take the port meanwhile.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")},
            "EVENTBUS_TRANSPORT_URL": f"redis://127.0.0.1:{port}/0",
            "SLOW_DATABASE": str(tmp_path / "worker.sqlite3"),
            "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
        }
        worker = _worker(env)
        lines: queue.Queue[str | None] = queue.Queue()
        seen: list[str] = []

        def read() -> None:
            assert worker.stderr is not None
            for line in worker.stderr:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            # Wait until the worker is in a reconnect wait of 4 s (its fourth attempt
            # failed): SIGTERM then, and the old code would not even try again before
            # that wait is over.
            deadline = time.monotonic() + 60
            waiting = None
            while waiting is None:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                assert line is not None, "".join(seen)
                seen.append(line)
                found = re.search(r"trying again in ([\d.]+) s", line)
                if found and float(found.group(1)) >= 4.0:
                    waiting = float(found.group(1))
            worker.send_signal(signal.SIGTERM)
            # Before the reconnect wait in progress would have ended (the old code took
            # the whole shutdown timeout, 10 s).
            worker.wait(timeout=waiting)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            reader.join(timeout=10)
            assert worker.stderr is not None
            worker.stderr.close()
        while (line := lines.get_nowait()) is not None:
            seen.append(line)
    output = "".join(seen)
    assert worker.returncode == 0, output
    stopping = output.index("finishing the messages in hand")
    assert "trying again" not in output[stopping:], output
    assert "cannot connect the worker's transport" in output[:stopping]
