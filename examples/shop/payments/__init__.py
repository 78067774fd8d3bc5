"""Payments: charges customers once their stock is reserved."""
