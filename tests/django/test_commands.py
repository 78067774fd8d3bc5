"""``manage.py eventbus ...`` (and ``eventbus --app eventbus_contrib.django:bus``), run as a
user runs them: processes of their own on the test project's database, which see the dead
letters and the outbox this process wrote there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from tests.servers import broker_namespace
from tests.serving import Serving

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "tests" / "django" / "project" / "manage.py"


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(MANAGE), "eventbus", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def bus(django_project: None) -> Iterator[Any]:
    """The project's bus on its SQLite database, emptied after the test."""
    from django.db import connections
    from eventbus_contrib.django import bus

    from tests.django.shop import handlers

    handlers.forget()
    yield bus
    bus.drain(timeout=60)
    handlers.forget()
    bus.outbox.clear()
    bus.dead_letters.purge(all=True)
    with connections["default"].cursor() as cursor:
        cursor.execute("DELETE FROM shop_order")
        cursor.execute("DELETE FROM shop_reservation")


def refused_charge(bus: Any, order_id: str) -> Any:
    """A dead letter of ``shop.charge``, committed (a publish outside any transaction)."""
    from tests.django.shop import handlers
    from tests.django.shop.events import OrderPlaced

    handlers.BROKEN.add(order_id)
    bus.publish(OrderPlaced(order_id=order_id), key=order_id)
    bus.drain(timeout=60)
    (letter,) = bus.dead_letters.list(handler="shop.charge")
    return letter


def test_dlq_list_and_replay_see_the_letters_in_the_database(bus: Any) -> None:
    letter = refused_charge(bus, "bad-cmd-1")

    listed = manage("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = json.loads(listed.stdout)
    assert (shown["id"], shown["handler"]) == (str(letter.id), "shop.charge")
    assert "warning" not in listed.stderr  # the letters are shared, not in memory

    replayed = manage("dlq", "replay", "--all", "--json")  # the child's card is not refused
    assert replayed.returncode == 0, replayed.stderr
    assert [r["outcome"] for r in json.loads(replayed.stdout)] == ["replayed"]
    assert bus.dead_letters.count() == 0


def test_the_eventbus_command_finds_the_project_bus_through_django_settings(bus: Any) -> None:
    letter = refused_charge(bus, "bad-cmd-2")
    result = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "dlq", "show", str(letter.id)],
        cwd=ROOT,
        env={**os.environ, "EVENTBUS_APP": "eventbus_contrib.django:bus"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "shop.charge" in result.stdout
    assert "bad-cmd-2" in result.stdout


def test_outbox_status_and_catalog(bus: Any) -> None:
    from eventbus.outbox import PendingRow

    bus.stop()  # this process's relay leaves the row alone (the fixture removes it)
    row = PendingRow(uuid.uuid4(), "djangotests.order_placed", "shop.charge", "k", b"{}")
    bus.outbox.write_now([row])
    status = manage("outbox", "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["by_name"] == {"djangotests.order_placed": 1}

    catalog = manage("catalog")
    assert catalog.returncode == 0, catalog.stderr
    assert "shop.reserve_stock  [durable]" in catalog.stdout
    assert "shop.send_receipt  [after_commit]" in catalog.stdout


def test_outbox_init_applies_the_migration_and_prints_its_sql(bus: Any) -> None:
    init = manage("outbox", "init")
    assert init.returncode == 0, init.stderr
    assert "DjangoOutbox('default')" in init.stdout
    sql = manage("outbox", "init", "--sql")
    assert sql.returncode == 0, sql.stderr
    assert 'CREATE TABLE "eventbus_outbox"' in sql.stdout


def test_the_relay_runs_in_a_process_of_its_own_and_stops_on_sigterm(bus: Any) -> None:
    from eventbus_contrib.django import bus_from_settings

    from tests.django.shop import handlers
    from tests.django.shop.events import OrderPlaced

    bus.stop()  # this process relays nothing meanwhile
    publisher = bus_from_settings({"relay": False})  # a web process: the relay runs apart
    handlers.subscribe(publisher)
    try:
        publisher.publish(OrderPlaced(order_id="o-relay"), key="o-relay")
        assert bus.outbox.status().pending == 2
        relay = subprocess.Popen(
            [sys.executable, str(MANAGE), "eventbus", "relay"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while bus.outbox.status().pending and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            relay.send_signal(signal.SIGTERM)
            _, stderr = relay.communicate(timeout=60)
        assert bus.outbox.status().pending == 0
        assert relay.returncode == 0, stderr
        assert "relaying DjangoOutbox('default')" in stderr
        assert handlers.RUNS == []  # they ran in the relay's process
        from tests.django.shop.models import Reservation

        assert Reservation.objects.filter(order_id="o-relay").count() == 1
    finally:
        publisher.close()
        publisher.outbox.close()
        publisher.dead_letters.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--app", "x:bus", "catalog"], "drop --app"),
        (["worker", "--transport-url", "redis://127.0.0.1:1/0"], "settings.EVENTBUS"),
        (["worker", "--group=g"], "settings.EVENTBUS"),
    ],
)
def test_options_that_would_be_ignored_are_refused(
    django_project: None, args: list[str], message: str
) -> None:
    result = manage(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_relay_process_on_postgresql_is_woken_by_a_commit_elsewhere(
    django_postgresql: str,
) -> None:
    """``manage.py eventbus relay`` polls only every 30 s; a commit in another process (a
    web process, with no relay of its own) wakes it through NOTIFY, so each row is
    delivered within seconds."""
    from django.db import transaction
    from eventbus_contrib.django import bus_from_settings

    from tests.django.shop import handlers
    from tests.django.shop.events import OrderPlaced
    from tests.django.shop.models import Reservation

    in_this_process = handlers.BUSES.get(django_postgresql)
    if in_this_process is not None:
        in_this_process.stop()  # the session's bus on this database relays nothing meanwhile
    publisher = bus_from_settings({"database": django_postgresql, "relay": False})
    handlers.subscribe(publisher)
    orders = [f"o-woken-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    settings = {"database": django_postgresql, "poll_interval": 30}
    relay = Serving(
        [sys.executable, str(MANAGE), "eventbus", "relay"],
        cwd=ROOT,
        env={**os.environ, "EVENTBUS_TEST_DJANGO_SETTINGS": json.dumps(settings)},
    )
    try:
        with relay:
            relay.wait_for("relaying")
            for order_id in orders:
                time.sleep(2)  # the relay's claim found nothing: it waits its 30 s
                with transaction.atomic(using=django_postgresql):
                    publisher.publish(OrderPlaced(order_id=order_id), key=order_id)
                started = time.monotonic()
                reserved = Reservation.objects.using(django_postgresql).filter(order_id=order_id)
                while not reserved.exists() and time.monotonic() - started < 10:
                    time.sleep(0.05)
                assert reserved.exists(), f"not delivered within 10 s:\n{relay.stderr}"
        assert not [run for run in handlers.RUNS if run[1] in orders]  # the relay's process
        assert relay.returncode == 0, relay.stderr
    finally:
        publisher.close()
        publisher.outbox.close()
        publisher.dead_letters.close()
        Reservation.objects.using(django_postgresql).filter(order_id__in=orders).delete()


def test_the_worker_consumes_the_transport_into_django_handlers(bus: Any) -> None:
    """``manage.py eventbus worker`` on Redis Streams: what a web process (no worker)
    publishes goes through its relay to the broker, and the worker's Django handlers run
    it in their own transactions; SIGTERM stops it, exit 0."""
    from eventbus_contrib.django import bus_from_settings

    from tests.django.shop import handlers
    from tests.django.shop.events import OrderPlaced
    from tests.django.shop.models import Reservation

    with broker_namespace("redis") as space:
        group = space.group()
        publisher = bus_from_settings({"transport_url": space.url, "group": group, "worker": False})
        handlers.subscribe(publisher)
        worker = Serving(
            [sys.executable, str(MANAGE), "eventbus", "worker"],
            cwd=ROOT,
            env={**os.environ, "EVENTBUS_TRANSPORT_URL": space.url, "EVENTBUS_GROUP": group},
        )
        try:
            with worker:
                worker.wait_for("worker for group")
                for order_id in ("o-worked-1", "o-worked-2"):
                    publisher.publish(OrderPlaced(order_id=order_id), key=order_id)
                publisher.drain(timeout=60)  # the relay handed them to the broker
                reserved = Reservation.objects.filter(order_id__startswith="o-worked-")
                deadline = time.monotonic() + 60
                while reserved.count() < 2 and time.monotonic() < deadline:
                    assert worker.running(), worker.stderr
                    time.sleep(0.1)
                assert sorted(reserved.values_list("order_id", flat=True)) == [
                    "o-worked-1",
                    "o-worked-2",
                ]
            assert worker.returncode == 0, worker.stderr
            assert handlers.RUNS == []  # in the worker's process, not here
            assert bus.outbox.status().pending == 0
        finally:
            publisher.close()
            publisher.outbox.close()
            publisher.dead_letters.close()


def test_the_shipped_migration_matches_the_models(django_project: None) -> None:
    """A model changed without its migration would leave users' ``makemigrations``
    writing one into site-packages: the shipped migrations must describe the models."""
    result = subprocess.run(
        [sys.executable, str(MANAGE), "makemigrations", "eventbus", "--check", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
