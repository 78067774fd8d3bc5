"""Run the shop's scenario: ``python -m examples.shop``."""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

from eventbus import Envelope, EventBus, hooks

from .app import create_app
from .orders.events import Line
from .orders.module import InvalidOrderError


def main() -> int:
    shop = create_app(EventBus())
    flow: list[Envelope] = []

    def record(_bus: EventBus, *, envelope: Envelope, **_: Any) -> None:
        flow.append(envelope)

    with hooks.event_published.connected_to(record, sender=shop.bus):
        shop.orders.place("o-1", "alice", [Line("book", 2, Decimal("12.50"))])
        shop.orders.place("o-2", "mallory", [Line("mug", 1, Decimal("8.00"))])
        shop.orders.place("o-3", "bob", [Line("poster", 1, Decimal("5.00"))])
        try:
            shop.orders.place("o-4", "carol", [])
        except InvalidOrderError as exc:
            print(f"refused at once, inline: {exc}\n")

    print("orders")
    for order_id, state in shop.orders.states.items():
        print(f"  {order_id}  {state}")
    print("\nstock:", ", ".join(f"{sku}={n}" for sku, n in shop.inventory.stock.items()))
    print("payments taken:", ", ".join(f"{k}={v}" for k, v in shop.payments.taken.items()))
    print("\nnotifications")
    for message in shop.notifications.sent:
        print(f"  {message}")
    print("\nevent flow (id / caused by / correlation, last 8 hex digits)")
    for envelope in flow:
        cause = str(envelope.causation_id)[-8:] if envelope.causation_id else "-" * 8
        print(
            f"  {str(envelope.id)[-8:]}  {cause}  {str(envelope.correlation_id)[-8:]}  "
            f"{envelope.name}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
