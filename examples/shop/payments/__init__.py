"""Payments: takes the money when the order saga asks for it, through a card gateway."""
