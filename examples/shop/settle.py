"""Waiting for the shop to come to rest, by what it shows rather than by the bus's state.

``bus.drain()`` knows only this process: with a transport, the work may be inside the
broker or in a worker elsewhere. So the scenario waits for outcomes it can read in the
shop's database, whichever process produced them: every order final, its page showing it,
a cancelled order's stock given back, its email sent or dead-lettered, and every handler
of every recorded event done with it (the flow tables, which every process writes).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from .flow import read_flow
from .inventory.stock import holding
from .orders.overview import final_status, order_pages
from .orders.queries import all_orders

if TYPE_CHECKING:
    from .wiring import Shop

__all__ = ["outstanding", "wait_for_rest"]

EMAIL_HANDLERS = ("notifications.send_confirmation", "notifications.send_cancellation")


def outstanding(shop: Shop) -> list[str]:
    """What has not happened yet, for people; empty once the shop is at rest."""
    db, bus = shop.db, shop.bus
    shop.flow.flush()  # this process's own records first
    missing: list[str] = []
    pages = {page["order_id"]: page for page in order_pages(db)}
    held = holding(db)
    dead_lettered = {
        getattr(letter.envelope(bus.codec).event, "order_id", None)
        for letter in bus.dead_letters.list()
        if letter.handler in EMAIL_HANDLERS
    }
    for order in all_orders(db):
        order_id, state = order["order_id"], order["state"]
        status = final_status(order)
        if status is None:
            missing.append(f"{order_id} to be confirmed or cancelled (it is {state})")
            continue
        page = pages.get(order_id)
        if page is None or page["status"] != status:
            shown = "nothing" if page is None else repr(page["status"])
            missing.append(f"{order_id}'s page to say {status!r} (it says {shown})")
        if state == "cancelled" and order_id in held:
            missing.append(f"{order_id}'s stock to be released")
        if (page is None or not page["last_email"]) and order_id not in dead_lettered:
            missing.append(f"{order_id}'s email to be sent or dead-lettered")
    for step in read_flow(db):
        missing.extend(
            f"{handler} to finish with {step.name} {step.envelope_id[-8:]} of {step.order_id}"
            for handler in step.unfinished()
        )
    return missing


def wait_for_rest(shop: Shop, *, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Until ``outstanding`` is empty; ``TimeoutError`` naming what did not arrive."""
    deadline = time.monotonic() + timeout
    while True:
        missing = outstanding(shop)
        if not missing:
            return
        if time.monotonic() > deadline:
            break
        # Not what is waited for, a wake-up: drain() has this process's relay look at the
        # outbox now, so a retry that came due is not left for its next poll. It returns
        # having waited only for what this process holds: it cannot see inside the broker
        # or another process (bounded anyway: the outcomes decide, not drain).
        with contextlib.suppress(TimeoutError):
            shop.bus.drain(timeout=1.0)
        time.sleep(interval)
    hint = ""
    if shop.bus.transport is not None:
        hint = (
            f"; durable handlers run in the workers on {shop.bus.transport!r}: is one running "
            "(python -m eventbus worker --app examples.shop.app:bus, with the same "
            "EVENTBUS_TRANSPORT_URL, EVENTBUS_GROUP and SHOP_DATABASE_URL)?"
        )
    shown = "; ".join(missing[:8]) + (f"; and {len(missing) - 8} more" if len(missing) > 8 else "")
    raise TimeoutError(
        f"the shop did not come to rest within {timeout:g} s: waiting for {shown}{hint}"
    )
