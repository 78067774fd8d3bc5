"""``flask eventbus relay|worker|dlq replay`` as an operator runs them: processes of their
own (``flask --app tests.frameworks.flask_shop``) on the database the test's application
writes, stopped by SIGTERM with exit 0, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.frameworks.flask_shop import Shop, make_shop
from tests.servers import broker_namespace
from tests.serving import Serving

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.frameworks.flask_shop"


@pytest.fixture
def environment(backend: Any, prefix: str, make_engine: Any) -> dict[str, str]:
    """The environment of a ``flask`` process on the test's database and tables (which
    ``make_engine``'s teardown drops)."""
    del make_engine
    return {
        **os.environ,
        "FLASK_SHOP_DATABASE": backend.url,
        "FLASK_SHOP_PREFIX": prefix,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


@pytest.fixture
def shops(backend: Any, prefix: str) -> Iterator[Callable[..., Shop]]:
    made: list[Shop] = []

    def make(**options: Any) -> Shop:
        shop = make_shop(backend.url, prefix, **options)
        made.append(shop)
        return shop

    yield make
    for shop in made:
        shop.close()


def flask(*args: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", APP, "eventbus", *args]


def wait_until(done: Callable[[], bool], serving: Serving, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert serving.running(), serving.stderr
        assert time.monotonic() < deadline, serving.stderr
        time.sleep(0.1)


def test_flask_eventbus_relay_delivers_what_the_web_process_committed(
    shops: Callable[..., Shop], environment: dict[str, str]
) -> None:
    web = shops(relay=False)  # web processes leave relaying to the relay process
    client = web.app.test_client()
    assert client.post("/orders/1").status_code == 200
    assert client.post("/orders/2").status_code == 200
    with web.app.app_context():
        outbox = web.events.bus.outbox
        assert outbox is not None
        assert outbox.status().pending == 2
    with Serving(flask("relay"), env=environment, cwd=ROOT) as relay:
        relay.wait_for("relaying")
        wait_until(lambda: web.shipped_numbers() == [1, 2], relay)
        with web.app.app_context():
            wait_until(lambda: outbox.status().pending == 0, relay)
    assert relay.returncode == 0, relay.stderr


def test_flask_eventbus_worker_consumes_the_transport(
    shops: Callable[..., Shop], environment: dict[str, str]
) -> None:
    with broker_namespace("redis") as space:
        group = space.group()
        web = shops(EVENTBUS_TRANSPORT_URL=space.url, EVENTBUS_GROUP=group, EVENTBUS_WORKER=False)
        command = flask("worker", "--transport-url", space.url, "--group", group)
        with Serving(command, env=environment, cwd=ROOT) as worker:
            worker.wait_for("worker for group")
            client = web.app.test_client()
            for number in (3, 4):
                assert client.post(f"/orders/{number}").status_code == 200
            with web.app.app_context():
                web.events.bus.drain(timeout=60)  # its relay handed them to Redis
            wait_until(lambda: web.shipped_numbers() == [3, 4], worker)
        assert worker.returncode == 0, worker.stderr


def test_flask_eventbus_dlq_replay_runs_a_real_letter_again(
    shops: Callable[..., Shop], environment: dict[str, str]
) -> None:
    web = shops()
    assert web.app.test_client().post("/orders/501").status_code == 200
    with web.app.app_context():
        bus = web.events.bus
        bus.drain(timeout=60)
        (letter,) = bus.dead_letters.list(handler="flaskcli.ship")
    assert web.shipped_numbers() == []

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            flask(*args),
            env={**environment, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    listed = run("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [shown["id"] for shown in json.loads(listed.stdout)] == [str(letter.id)]

    replayed = run("dlq", "replay", str(letter.id), "--json", FLASK_SHOP_MENDED="1")
    assert replayed.returncode == 0, replayed.stderr
    assert [r["outcome"] for r in json.loads(replayed.stdout)] == ["replayed"]
    assert web.shipped_numbers() == [501]
    with web.app.app_context():
        assert web.events.bus.dead_letters.count() == 0
