"""The inventory module: stock levels and reservations."""

from __future__ import annotations

from eventbus import EventBus

from ..orders.events import OrderCancelled, OrderPlaced
from .events import OutOfStock, StockReleased, StockReserved


class Inventory:
    def __init__(self, bus: EventBus, stock: dict[str, int]) -> None:
        self.bus = bus
        self.stock = dict(stock)
        self.reserved: dict[str, dict[str, int]] = {}
        bus.subscribe(self.reserve, name="inventory.reserve")
        bus.subscribe(self.release, name="inventory.release")

    def reserve(self, event: OrderPlaced) -> None:
        for line in event.lines:
            if self.stock.get(line.sku, 0) < line.quantity:
                self.bus.publish(OutOfStock(order_id=event.order_id, sku=line.sku))
                return
        taken = {line.sku: line.quantity for line in event.lines}
        for sku, quantity in taken.items():
            self.stock[sku] -= quantity
        self.reserved[event.order_id] = taken
        self.bus.publish(StockReserved(order_id=event.order_id, skus=tuple(taken)))

    def release(self, event: OrderCancelled) -> None:
        # Compensation: give back what this order held, if anything.
        taken = self.reserved.pop(event.order_id, None)
        if taken is None:
            return
        for sku, quantity in taken.items():
            self.stock[sku] += quantity
        self.bus.publish(StockReleased(order_id=event.order_id))
