"""Running the shop's scenario in a process of its own, and reading its summary.

Shared by the shop's tests, embedded and distributed: the assertions read the summary the
way a reader of the README would.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

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
OUTCOME_LINE = re.compile(r"^ {24,}(\S+) (.*?)(?:  \[pid (\d+)\])?$")
SHOP_ENVIRONMENT = (
    "SHOP_DATABASE_URL",
    "EVENTBUS_TRANSPORT_URL",
    "EVENTBUS_GROUP",
    "EVENTBUS_WORKER",
)


def shop_environment(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without the shop's settings, then ``settings``."""
    environment = {k: v for k, v in os.environ.items() if k not in SHOP_ENVIRONMENT}
    return {**environment, "SHOP_DATA_DIR": str(data_dir), **settings}


def run_shop(
    data_dir: Path, *, database_url: str | None = None, settings: Mapping[str, str] = {}
) -> str:
    environment = shop_environment(data_dir, **settings)
    if database_url is not None:
        environment["SHOP_DATABASE_URL"] = database_url
    if "SHOP_DATABASE_URL" in environment:
        command = [sys.executable, "-m", "examples.shop"]
    else:
        command = [sys.executable, "-c", WITHOUT_SQLALCHEMY]
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


def outcomes_by_event(out: str) -> dict[str, list[tuple[str, str, int | None]]]:
    """Per event id: what its handlers did, as (handler, outcome, pid or None if it
    happened in the scenario's own process)."""
    outcomes: dict[str, list[tuple[str, str, int | None]]] = {}
    current: list[tuple[str, str, int | None]] = []
    for line in out.split("\n== Event flow", 1)[1].splitlines():
        event = FLOW_LINE.match(line)
        if event:
            current = outcomes.setdefault(event[1], [])
            continue
        outcome = OUTCOME_LINE.match(line)
        if outcome:
            pid = None if outcome[3] is None else int(outcome[3])
            current.append((outcome[1], outcome[2], pid))
    return outcomes


def scenario_pid(out: str) -> int:
    found = re.search(r"this\s+process \(pid (\d+)\)", out)
    assert found is not None, "the summary names the scenario's process"
    return int(found[1])


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

    # The replays ran in the eventbus command's process, which recorded them too: each
    # cancellation's email is in the flow, caused by the cancellation.
    outcomes = outcomes_by_event(out)
    here = scenario_pid(out)
    for order_id in ("o-1002", "o-1003"):
        _, events = flows[order_id]
        named = {name: (event_id, cause) for event_id, cause, _, name in events}
        cancelled = named["shop.order_cancelled"][0]
        assert named["shop.email_sent"][1] == cancelled
        replays = [
            pid
            for handler, what, pid in outcomes[cancelled]
            if handler == "notifications.send_cancellation" and what == "ok"
        ]
        assert len(replays) == 1, outcomes[cancelled]
        assert replays[0] not in (None, here), "replayed in the eventbus command's process"
