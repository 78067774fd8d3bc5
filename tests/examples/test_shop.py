"""The shop example, end to end: ``python -m examples.shop`` in a process of its own.

Each run gets its own data folder (``SHOP_DATA_DIR``), and on PostgreSQL its own schema,
so runs in parallel do not meet. The assertions read the summary the scenario prints,
the way a reader of the README would, and check the database behind it.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from eventbus.errors import ConfigurationError
from examples.shop.db import open_database
from examples.shop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# The README's first command installs the core only: the default path must not need
# SQLAlchemy. Making its import fail in the scenario's process proves it does not.
WITHOUT_SQLALCHEMY = (
    "import runpy, sys\n"
    "sys.modules['sqlalchemy'] = None\n"
    "runpy.run_module('examples.shop', run_name='__main__', alter_sys=True)\n"
)

FLOW_LINE = re.compile(r"^    ([0-9a-f]{8})  ([0-9a-f]{8}|-{8})  ( *)(shop\.\S+)$")
GROUP_LINE = re.compile(r"^  order (\S+), correlation ([0-9a-f]{8})$")


def run_shop(data_dir: Path, *, database_url: str | None = None) -> str:
    environment = {**os.environ, "SHOP_DATA_DIR": str(data_dir)}
    environment.pop("SHOP_DATABASE_URL", None)
    if database_url is None:
        command = [sys.executable, "-c", WITHOUT_SQLALCHEMY]
    else:
        environment["SHOP_DATABASE_URL"] = database_url
        command = [sys.executable, "-m", "examples.shop"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


def section(out: str, title: str) -> list[str]:
    """The lines of the summary section whose heading starts with ``title``."""
    start = out.index(f"\n== {title}") + 1
    lines = out[start:].split("\n")[1:]
    end = next((i for i, line in enumerate(lines) if line.startswith("== ")), len(lines))
    return [line for line in lines[:end] if line.strip()]


def flow_by_order(out: str) -> dict[str, tuple[str, list[tuple[str, str, int, str]]]]:
    """Per order: its correlation, and its events as (id, cause, depth, name)."""
    flows: dict[str, tuple[str, list[tuple[str, str, int, str]]]] = {}
    current: list[tuple[str, str, int, str]] = []
    for line in out.split("\n== Event flow", 1)[1].splitlines():
        group = GROUP_LINE.match(line)
        if group:
            current = []
            flows[group[1]] = (group[2], current)
            continue
        event = FLOW_LINE.match(line)
        if event:
            current.append((event[1], event[2], len(event[3]) // 2, event[4]))
    return flows


def check_story(out: str) -> None:
    orders = section(out, "Orders")
    assert re.match(r"  o-1001  confirmed +alice@example\.com +33\.00$", orders[0])
    assert re.match(r"  o-1002  cancelled .* payment declined: insufficient funds$", orders[1])
    assert re.match(r"  o-1003  cancelled .* out of stock: poster \(wanted 2, 1 left\)$", orders[2])
    assert re.match(r"  o-1004  rejected .* never stored: .*we do not sell unicorn", orders[3])

    pages = section(out, "Order pages")
    assert pages == [
        "  o-1001  confirmed  last email: Your order o-1001 is confirmed",
        (
            "  o-1002  cancelled (payment declined: insufficient funds)"
            "  last email: Your order o-1002 was cancelled"
        ),
        (
            "  o-1003  cancelled (out of stock: poster (wanted 2, 1 left))"
            "  last email: Your order o-1003 was cancelled"
        ),
    ]

    # The compensation: o-1002's two mugs were reserved, then released; o-1001 holds its own.
    stock = section(out, "Stock")
    assert stock == [
        "  book    on hand  8  held  2  received 10",
        "  mug     on hand  4  held  1  received  5",
        "  poster  on hand  1  held  0  received  1",
    ]
    assert section(out, "Payments") == [
        "  o-1001  captured   33.00  ch_o-1001",
        "  o-1002  declined   16.00  insufficient funds",
    ]

    # The greylisted confirmation was retried, and delivered once; the replayed
    # cancellations too (each was greylisted once during its replay).
    mailbox = section(out, "Mailbox")
    assert len(mailbox) == 3
    for recipient, subject in (
        ("alice@example.com", "Your order o-1001 is confirmed"),
        ("mallory@example.com", "Your order o-1002 was cancelled"),
        ("bob@example.com", "Your order o-1003 was cancelled"),
    ):
        assert any(
            line.split() == [recipient, *subject.split(), "submitted", "1x"] for line in mailbox
        ), mailbox
    assert "notifications.send_confirmation attempt 1 failed (MailServerBusyError)" in out

    # The dead letters: written, then replayed by the eventbus command, then gone.
    assert "\n2 dead letters:\n" in out
    assert "replayed 2, failed 0" in out
    assert "$ eventbus dlq list --app examples.shop.app:bus\n    no dead letters" in out
    assert "== Dead letters: 2 written, replayed from the command line, 0 left" in out

    flows = flow_by_order(out)
    assert sorted(flows) == ["o-1001", "o-1002", "o-1003", "o-1004"]
    for correlation, events in flows.values():
        root_id, root_cause, depth, _ = events[0]
        assert (root_id, root_cause, depth) == (correlation, "-" * 8, 0)
        ids = {event_id for event_id, *_ in events}
        for _, cause, depth, name in events[1:]:
            assert cause in ids, name  # every later event was caused by one of its order's
            assert depth >= 1
    _, confirmed = flows["o-1001"]
    assert [name for *_, name in confirmed] == [
        "shop.order_placed",
        "shop.stock_reserved",
        "shop.payment_requested",
        "shop.payment_taken",
        "shop.order_confirmed",
        "shop.email_sent",
    ]
    # A chain: each caused by the one before, one level deeper.
    for (before, *_), (_, cause, *_) in itertools.pairwise(confirmed):
        assert cause == before
    assert [depth for _, _, depth, _ in confirmed] == [0, 1, 2, 3, 4, 5]
    _, declined = flows["o-1002"]
    by_name = {name: (event_id, cause) for event_id, cause, _, name in declined}
    assert by_name["shop.order_cancelled"][1] == by_name["shop.payment_failed"][0]
    assert by_name["shop.stock_released"][1] == by_name["shop.order_cancelled"][0]
    _, out_of_stock = flows["o-1003"]
    assert "shop.stock_released" not in [name for *_, name in out_of_stock]  # nothing held
    _, rejected = flows["o-1004"]
    assert [name for *_, name in rejected] == ["shop.order_placed"]
    assert "inventory.check_products raised OrderRejectedError to the publisher" in out


def test_the_embedded_default_tells_the_whole_story(tmp_path: Path) -> None:
    data_dir = tmp_path / "shop"
    out = run_shop(data_dir)
    check_story(out)
    assert f"SQLite file {data_dir / 'shop.sqlite3'}" in out
    with sqlite3.connect(data_dir / "shop.sqlite3") as connection:
        # The rejected order left nothing behind, and the outbox was emptied.
        orders = connection.execute("SELECT order_id FROM orders ORDER BY order_id").fetchall()
        assert orders == [("o-1001",), ("o-1002",), ("o-1003",)]
        assert connection.execute("SELECT COUNT(*) FROM eventbus_outbox").fetchone() == (0,)
    connection.close()

    # Every run starts from a clean slate: the same story again, in the same folder,
    # which loses only the files the shop made there.
    (data_dir / "notes.txt").write_text("not the shop's", encoding="utf-8")
    again = run_shop(data_dir)
    check_story(again)
    assert section(again, "Orders") == section(out, "Orders")
    assert (data_dir / "notes.txt").read_text(encoding="utf-8") == "not the shop's"


@pytest.fixture
def postgresql_schema(backend: Any) -> Iterator[str]:
    """A PostgreSQL URL whose connections work in a fresh schema, dropped at the end."""
    import sqlalchemy as sa

    url = sa.make_url(backend.url)
    schema = f"shop_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        yield url.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
            hide_password=False
        )
    finally:
        with engine.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_same_modules_run_on_postgresql(postgresql_schema: str, tmp_path: Path) -> None:
    out = run_shop(tmp_path / "shop", database_url=postgresql_schema)
    check_story(out)
    assert "The shop runs on postgresql at postgresql+psycopg://" in out


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
