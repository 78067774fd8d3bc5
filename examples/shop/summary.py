"""The scenario's summary: the state of every module, then the event flow that led there."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from .inventory.stock import stock_levels
from .orders.overview import order_pages
from .orders.queries import all_orders
from .payments.queries import all_payments

if TYPE_CHECKING:
    from .flow import Step
    from .wiring import Shop

__all__ = ["Rejection", "Story", "print_summary"]

Say = Callable[[str], None]


@attrs.frozen
class Rejection:
    order_id: str
    customer: str
    reason: str


@attrs.frozen
class Story:
    flow: Sequence[Step]
    here: int
    """The scenario's pid: outcomes in other processes say where they happened."""
    rejections: Sequence[Rejection]
    dead_letters_written: int
    dead_letters_left: int
    replayed: bool


def print_summary(shop: Shop, story: Story, say: Say = print) -> None:
    db = shop.db
    say("\n== Orders (the orders module's table)")
    for order in all_orders(db):
        reason = order["reason"] or ""
        say(
            f"  {order['order_id']}  {order['state']:<10}{order['customer']:<21}"
            f"{order['total']:>7}  {reason}".rstrip()
        )
    for rejection in story.rejections:
        say(
            f"  {rejection.order_id}  {'rejected':<10}{rejection.customer:<21}{'':>7}  "
            f"never stored: {rejection.reason}"
        )

    say("\n== Order pages (the read model, kept by after-commit handlers)")
    for page in order_pages(db):
        email = f"  last email: {page['last_email']}" if page["last_email"] else ""
        say(f"  {page['order_id']}  {page['status']}{email}")

    say("\n== Stock (inventory): on hand, held for orders, received")
    for product in stock_levels(db):
        say(
            f"  {product['sku']:<7} on hand {int(product['on_hand']):>2}  held "
            f"{int(product['held']):>2}  received {int(product['received']):>2}"
        )

    say("\n== Payments")
    for payment in all_payments(db):
        detail = payment["reference"] or payment["reason"] or ""
        say(f"  {payment['order_id']}  {payment['state']:<9}{payment['amount']:>7}  {detail}")

    say("\n== Mailbox (the stand-in mail server: each message and how often it was submitted)")
    for mail in shop.mail.mailbox():
        say(f"  {mail['recipient']:<21}{mail['subject']:<38}submitted {int(mail['submissions'])}x")

    outcome = "replayed from the command line" if story.replayed else "NOT replayed"
    say(
        f"\n== Dead letters: {story.dead_letters_written} written, {outcome}, "
        f"{story.dead_letters_left} left"
    )

    say("\n== Event flow")
    say("  Ids are the last 8 hex digits of each envelope's id; an event is indented under")
    say("  its cause (causation id). Each order's story shares one correlation id: its first")
    say("  event's. Below an event, what its handlers did, and [pid N] where that was not")
    say(f"  this process (pid {story.here}) but a worker, or the eventbus command that")
    say("  replayed the dead letters: every process records its part in the shop's database.")
    _print_flow(story.flow, story.here, say)


def _print_flow(steps: Sequence[Step], here: int, say: Say) -> None:
    by_id = {step.envelope_id: step for step in steps}
    children: dict[str | None, list[Step]] = {}
    for step in steps:
        cause = step.causation_id
        children.setdefault(cause if cause in by_id else None, []).append(step)

    def show(step: Step, depth: int) -> None:
        cause = _short(step.causation_id)
        say(f"    {_short(step.envelope_id)}  {cause}  {'  ' * depth}{step.name}")
        for outcome in step.outcomes:
            where = "" if outcome.pid == here else f"  [pid {outcome.pid}]"
            say(f"    {'':8}  {'':8}  {'  ' * depth}  {outcome.detail}{where}")
        for child in children.get(step.envelope_id, ()):
            show(child, depth + 1)

    for root in children.get(None, ()):
        say(f"\n  order {root.order_id or '?'}, correlation {_short(root.correlation_id)}")
        say(f"    {'id':<8}  {'cause':<8}  event")
        show(root, 0)


def _short(value: str | None) -> str:
    """The last 8 hex digits of a UUID's text."""
    return "-" * 8 if value is None else value[-8:]
