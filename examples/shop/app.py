"""Wires the shop's modules onto one bus."""

from __future__ import annotations

import attrs

from eventbus import EventBus

from .inventory.module import Inventory
from .notifications.module import Notifications
from .orders.module import Orders
from .payments.module import Payments

INITIAL_STOCK = {"book": 10, "mug": 2, "poster": 0}
DECLINED_CUSTOMERS = {"mallory"}


@attrs.define
class Shop:
    bus: EventBus
    orders: Orders
    inventory: Inventory
    payments: Payments
    notifications: Notifications


def create_app(bus: EventBus | None = None) -> Shop:
    bus = EventBus() if bus is None else bus
    # Inline handlers run in subscription order, and a nested publish runs its handlers
    # before the outer ones continue: payments must learn an order's amount before
    # inventory reserves its stock (which triggers the charge).
    orders = Orders(bus)
    payments = Payments(bus, DECLINED_CUSTOMERS)
    inventory = Inventory(bus, INITIAL_STOCK)
    notifications = Notifications(bus)
    return Shop(bus, orders, inventory, payments, notifications)


bus = create_app().bus
"""For the command line: ``eventbus catalog --app examples.shop.app:bus``."""
