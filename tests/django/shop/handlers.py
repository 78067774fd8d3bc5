"""The shop's handlers, subscribed on a bus: the project's (``default``), and in the tests
on PostgreSQL a second one made with ``bus_from_settings`` (``postgresql``)."""

import threading

from django.db.backends.base.base import BaseDatabaseWrapper

from eventbus import EventBus, RejectEvent

from .events import OrderNoted, OrderPlaced
from .models import Reservation

BUSES: dict[str, EventBus] = {}
"""The bus of each database alias, for the views."""

_lock = threading.Lock()
RECEIPTS: list[tuple[str, str]] = []
"""(alias, order id) of every receipt sent: after-commit handlers write no database."""
NOTES: list[str] = []
RUNS: list[tuple[str, str]] = []
"""(handler, order id) of every run of a durable handler, effects committed or not."""
BROKEN: set[str] = set()
"""Order ids the charge handler refuses (until a test mends them, then replays)."""


def subscribe(bus: EventBus) -> None:
    alias = getattr(bus.outbox, "alias", "?")

    @bus.subscribe(name="shop.reserve_stock", delivery="durable")
    def reserve_stock(event: OrderPlaced, connection: BaseDatabaseWrapper) -> None:
        with _lock:
            RUNS.append(("shop.reserve_stock", event.order_id))
        Reservation.objects.using(connection.alias).create(order_id=event.order_id)

    @bus.subscribe(name="shop.charge", delivery="durable")
    def charge(event: OrderPlaced) -> None:
        with _lock:
            RUNS.append(("shop.charge", event.order_id))
        if event.order_id in BROKEN:
            raise RejectEvent(f"the card of {event.order_id} is refused")

    @bus.subscribe(name="shop.send_receipt", delivery="after_commit")
    def send_receipt(event: OrderPlaced) -> None:
        with _lock:
            RECEIPTS.append((alias, event.order_id))

    @bus.subscribe(name="shop.note", delivery="after_commit")
    def note(event: OrderNoted) -> None:
        with _lock:
            NOTES.append(event.order_id)


def forget() -> None:
    with _lock:
        RECEIPTS.clear()
        NOTES.clear()
        RUNS.clear()
        BROKEN.clear()
