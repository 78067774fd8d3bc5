"""The facts the inventory module publishes."""

from __future__ import annotations

import eventbus

__all__ = ["OutOfStock", "StockReleased", "StockReserved"]


@eventbus.event("shop.stock_reserved")
class StockReserved:
    order_id: str


@eventbus.event("shop.out_of_stock")
class OutOfStock:
    order_id: str
    sku: str
    wanted: int
    available: int


@eventbus.event("shop.stock_released")
class StockReleased:
    order_id: str
