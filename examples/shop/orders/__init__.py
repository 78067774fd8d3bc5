"""Orders: takes orders, and runs each one's saga through the other modules' events.

``commands.place_order`` stores an order and publishes ``OrderPlaced`` in one
transaction; ``saga`` follows the order (stock reserved, payment taken or failed) to
confirmed or cancelled; ``overview`` keeps the read model a customer's order page shows.
"""
