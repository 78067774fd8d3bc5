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
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import attrs

from .flow import read_flow
from .inventory import stock
from .notifications import templates
from .orders.commands import place_order
from .orders.events import OrderLine, OrderRejectedError
from .settle import wait_for_rest
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
    if bus.transport is not None:
        say(
            f"Durable events travel through {bus.transport!r}: the workers of the group run "
            "their handlers (this process too, unless EVENTBUS_WORKER=false)."
        )
    say(f"Its files (dead letters, mail templates, shop.log) are in {settings.data_dir}.")
    deployed = templates.install(settings.templates_dir, leave_out={FORGOTTEN_TEMPLATE})
    say(f"Deployed the mail templates {', '.join(deployed)} (but not {FORGOTTEN_TEMPLATE}).")
    for sku, name, quantity in STOCK:
        stock.receive(db, sku, name, quantity)
    say("Stocked " + ", ".join(f"{quantity} {sku}" for sku, _, quantity in STOCK) + ".\n")

    rejections: list[Rejection] = []
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
    # Wherever the handlers run, their outcomes land in this database: wait for those.
    wait_for_rest(shop)

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
    wait_for_rest(shop)

    print_summary(
        shop,
        Story(
            flow=read_flow(db),
            here=os.getpid(),
            rejections=rejections,
            dead_letters_written=len(letters),
            dead_letters_left=bus.dead_letters.count(),
            replayed=replay.returncode == 0,
        ),
        say,
    )
    return 0 if replay.returncode == 0 else 1


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
