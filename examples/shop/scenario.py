"""The scripted scenario: four orders, each showing another side of the bus.

- o-1001 goes through: stock reserved, payment taken, confirmed; its confirmation email
  is greylisted once and retried (durable, RetryPolicy on tenacity's strategies).
- o-1002's card is declined: the saga cancels the order and inventory releases the stock
  it held (compensation by event).
- o-1003 wants more posters than there are: cancelled before any payment.
- o-1004 asks for a product the shop does not sell: an inline handler refuses it inside
  the order's transaction, the caller gets the exception, nothing is stored or sent.

The cancellation emails cannot be written (their template was not deployed): they go to
the dead letters. The scenario deploys the template and replays them with the ``eventbus``
command, in a process of its own, as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import attrs

from eventbus import EventBus

from .flow import FlowRecorder
from .inventory import stock
from .notifications import templates
from .orders.commands import place_order
from .orders.events import OrderLine, OrderRejectedError
from .summary import Rejection, Story, print_summary
from .wiring import Shop

__all__ = ["ORDERS", "run"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""Where ``examples`` is importable from, for the ``eventbus`` command's --app."""
APP = "examples.shop.app:bus"
FORGOTTEN_TEMPLATE = "order_cancelled"
POISONED = "notifications.send_cancellation"
"""The handler that needs the forgotten template."""


@attrs.frozen
class Order:
    order_id: str
    customer: str
    lines: tuple[OrderLine, ...]
    payment_method: str


ORDERS = (
    Order(
        "o-1001",
        "alice@example.com",
        (OrderLine("book", 2, Decimal("12.50")), OrderLine("mug", 1, Decimal("8.00"))),
        "card-4242",
    ),
    Order("o-1002", "mallory@example.com", (OrderLine("mug", 2, Decimal("8.00")),), "card-0002"),
    Order("o-1003", "bob@example.com", (OrderLine("poster", 2, Decimal("5.00")),), "card-4242"),
    Order("o-1004", "carol@example.com", (OrderLine("unicorn", 1, Decimal("99.00")),), "card-4242"),
)
STOCK = (("book", "The Event Bus Book", 10), ("mug", "Mug", 5), ("poster", "Poster", 1))


def run(shop: Shop, say: Callable[[str], None] = print) -> int:
    bus, db, settings = shop.bus, shop.db, shop.settings
    say(f"The shop runs on {db.description}.")
    say(f"Its files (dead letters, mail templates, shop.log) are in {settings.data_dir}.")
    deployed = templates.install(settings.templates_dir, leave_out={FORGOTTEN_TEMPLATE})
    say(f"Deployed the mail templates {', '.join(deployed)} (but not {FORGOTTEN_TEMPLATE}).")
    for sku, name, quantity in STOCK:
        stock.receive(db, sku, name, quantity)
    say("Stocked " + ", ".join(f"{quantity} {sku}" for sku, _, quantity in STOCK) + ".\n")

    rejections: list[Rejection] = []
    with FlowRecorder(bus) as flow:
        say("Placing orders:")
        for order in ORDERS:
            try:
                place_order(
                    bus,
                    db,
                    order_id=order.order_id,
                    customer=order.customer,
                    lines=order.lines,
                    payment_method=order.payment_method,
                )
            except OrderRejectedError as refusal:
                rejections.append(Rejection(order.order_id, order.customer, str(refusal)))
                say(f"  {order.order_id} refused at once (inline handler): {refusal}")
            else:
                say(f"  {order.order_id} placed; the rest happens through the outbox")
        wait_until_settled(bus)

        letters = bus.dead_letters.list()
        say(f"\n{len(letters)} dead letters:")
        for letter in letters:
            error_type = letter.error_type.rpartition(".")[2]
            say(f"  {letter.id}  {letter.handler} on {letter.event_name}: {error_type}")
        if letters:
            say(f"  {letters[0].message}")
        templates.install(settings.templates_dir, only={FORGOTTEN_TEMPLATE})
        say(f"Deployed the missing template {FORGOTTEN_TEMPLATE}; replaying, as an operator would:")
        replay = _eventbus(say, settings.data_dir, "dlq", "replay", "--handler", POISONED)
        _eventbus(say, settings.data_dir, "dlq", "list")
        wait_until_settled(bus)

    print_summary(
        shop,
        Story(
            flow=flow.steps(),
            rejections=rejections,
            dead_letters_written=len(letters),
            dead_letters_left=bus.dead_letters.count(),
            replayed=replay.returncode == 0,
        ),
        say,
    )
    return 0 if replay.returncode == 0 else 1


def wait_until_settled(bus: EventBus, timeout: float = 30.0) -> None:
    """Until the outbox is empty and every handler has finished.

    ``bus.drain()`` waits for what is due now, not for a retry the outbox holds back
    until its time: look at the outbox too, and drain again until it is empty.
    """
    outbox = bus.outbox
    assert outbox is not None
    deadline = time.monotonic() + timeout
    while True:
        bus.drain(timeout=max(0.1, deadline - time.monotonic()))
        if outbox.status().pending == 0:
            bus.drain(timeout=max(0.1, deadline - time.monotonic()))
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the outbox still holds rows after {timeout} s: {outbox.status()}")
        time.sleep(0.05)


def _eventbus(
    say: Callable[[str], None], data_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run ``eventbus ARGS --app examples.shop.app:bus`` in a process of its own; show it."""
    arguments = [*args[:2], "--app", APP, *args[2:]]
    say(f"\n  $ eventbus {' '.join(arguments)}")
    # The child reads the same settings: the environment, with the data folder made
    # absolute, since it runs from the project root to find --app.
    environment = {**os.environ, "SHOP_DATA_DIR": str(data_dir)}
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "eventbus", *arguments],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in (result.stderr + result.stdout).splitlines():  # progress, then the result
        say(f"    {line}")
    return result
