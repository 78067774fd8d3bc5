"""Inventory: reserves stock for placed orders and releases it when they are cancelled."""
