"""Inventory: what the shop sells and has on its shelves.

Refuses orders for products it does not sell (inline, in the order's transaction),
reserves stock for placed orders and releases it when an order is cancelled (durable).
"""
