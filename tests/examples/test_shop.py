"""The shop example, end to end: ``python -m examples.shop`` in a process of its own.

Each run gets its own data folder (``SHOP_DATA_DIR``), and on PostgreSQL its own schema,
so runs in parallel do not meet. The assertions read the summary the scenario prints,
the way a reader of the README would, and check the database behind it.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from eventbus.errors import ConfigurationError
from examples.shop.db import open_database
from examples.shop.settings import Settings
from tests.examples.shop_story import ROOT, check_story, run_shop, section


def test_the_embedded_default_tells_the_whole_story(tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    out = run_shop(data_dir)
    check_story(out)
    assert f"SQLite file {data_dir / 'shop.sqlite3'}" in out
    with closing(sqlite3.connect(data_dir / "shop.sqlite3")) as connection:
        # The rejected order left nothing behind, and the outbox was emptied.
        orders = connection.execute("SELECT order_id FROM orders ORDER BY order_id").fetchall()
        assert orders == [("o-1001",), ("o-1002",), ("o-1003",)]
        assert connection.execute("SELECT COUNT(*) FROM eventbus_outbox").fetchone() == (0,)

    # Every run starts from a clean slate: the same story again, in the same folder,
    # which loses only the files the shop made there.
    (data_dir / "notes.txt").write_text("not the shop's", encoding="utf-8")
    again = run_shop(data_dir)
    check_story(again)
    assert section(again, "Orders") == section(out, "Orders")
    assert (data_dir / "notes.txt").read_text(encoding="utf-8") == "not the shop's"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_same_modules_run_on_postgresql(postgresql_schema: str, tmp_path: Path) -> None:
    out = run_shop(tmp_path / "shop", database_url=postgresql_schema)
    check_story(out)
    assert "The shop runs on postgresql at postgresql+psycopg://" in out
    # The dead letters live in the shop's database, where every host sees them: the
    # story's two cancellation emails were kept there, and its replay resolved them.
    assert not (tmp_path / "shop" / "dead_letters.sqlite3").exists()
    shop = open_database(Settings(data_dir=tmp_path / "shop", database_url=postgresql_schema))
    try:
        with shop.connect() as connection:
            assert connection.fetch_all("SELECT handler FROM eventbus_dead_letters") == []
        assert "== Dead letters: 2 written" in out
    finally:
        shop.close()


def test_the_data_folder_defaults_to_var_shop_and_is_ignored_by_git() -> None:
    settings = Settings.from_environment({})
    assert settings.data_dir == Path.cwd() / "var" / "shop"
    assert settings.database_url is None
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "var/shop/shop.sqlite3"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "var/ must be in .gitignore"


def test_a_database_the_shop_sql_does_not_speak_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url="mysql+pymysql://root@127.0.0.1/test")
    with pytest.raises(
        ConfigurationError, match=r"written for PostgreSQL and SQLite .* got a mysql"
    ):
        open_database(settings)


def test_redelivered_events_change_nothing(tmp_path: Path) -> None:
    """Durable delivery is at least once: run every durable handler a second time on
    every event of a finished order, as a relay would after a crash, and nothing moves."""
    from eventbus.testing import capture_events
    from examples.shop.inventory import stock
    from examples.shop.notifications import templates
    from examples.shop.orders.commands import place_order
    from examples.shop.orders.events import OrderLine
    from examples.shop.orders.queries import all_orders
    from examples.shop.payments.queries import all_payments
    from examples.shop.settle import wait_for_rest
    from examples.shop.wiring import create_app

    shop = create_app(Settings(data_dir=tmp_path))
    bus, db = shop.bus, shop.db
    try:
        templates.install(shop.settings.templates_dir)
        stock.receive(db, "mug", "Mug", 3)
        with capture_events(bus) as captured:
            for order_id, card in (("o-1", "card-4242"), ("o-2", "card-0002")):
                place_order(
                    bus,
                    db,
                    order_id=order_id,
                    customer=f"{order_id}@example.com",
                    lines=[OrderLine("mug", 1, Decimal("8.00"))],
                    payment_method=card,
                )
            wait_for_rest(shop)
        first = captured.envelopes
        before = (all_orders(db), stock.stock_levels(db), all_payments(db))
        assert [order["state"] for order in before[0]] == ["confirmed", "cancelled"]
        assert [int(level["on_hand"]) for level in before[1]] == [2]

        with capture_events(bus) as again:
            for envelope in first:
                for handler in bus.handlers_for(type(envelope.event)):
                    if handler.delivery == "durable":
                        handler.fn(envelope.event)
            wait_for_rest(shop)
            bus.drain(timeout=10)  # the outbox rows are completed just after the handlers
        assert (all_orders(db), stock.stock_levels(db), all_payments(db)) == before
        # The saga, inventory and payments published nothing the second time; only the
        # emails went out again, and the mail server delivered each message once.
        assert {type(event).__name__ for event in again.events} == {"EmailSent"}
        assert [int(mail["submissions"]) for mail in shop.mail.mailbox()] == [2, 2]
        assert bus.outbox is not None
        assert bus.outbox.status().pending == 0
    finally:
        shop.close()


def test_waiting_names_what_did_not_arrive_and_asks_for_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a transport and no process consuming it, nothing happens after the publish:
    the scenario's wait says what it waited for, and what to start."""
    from examples.shop.inventory import stock
    from examples.shop.orders.commands import place_order
    from examples.shop.orders.events import OrderLine
    from examples.shop.settle import wait_for_rest
    from examples.shop.wiring import create_app

    monkeypatch.setenv("EVENTBUS_TRANSPORT_URL", "memory://")
    monkeypatch.setenv("EVENTBUS_WORKER", "false")
    shop = create_app(Settings(data_dir=tmp_path))
    try:
        stock.receive(shop.db, "mug", "Mug", 3)
        place_order(
            shop.bus,
            shop.db,
            order_id="o-1",
            customer="o-1@example.com",
            lines=[OrderLine("mug", 1, Decimal("8.00"))],
            payment_method="card-4242",
        )
        with pytest.raises(TimeoutError) as raised:
            wait_for_rest(shop, timeout=0.3)
        message = str(raised.value)
        assert "did not come to rest within 0.3 s" in message
        assert "o-1 to be confirmed or cancelled (it is placed)" in message
        assert "inventory.reserve_stock to finish with shop.order_placed" in message
        assert "is one running (python -m eventbus worker --app examples.shop.app:bus" in message
    finally:
        shop.close()
