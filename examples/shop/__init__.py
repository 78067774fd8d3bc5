"""A small shop monolith whose modules talk only through events.

Each module (orders, inventory, payments, notifications) owns its tables, its events and
its handlers; none imports another's internals, only other modules' ``events``. ``app``
wires them onto one bus and one database; ``python -m examples.shop`` runs a scripted
scenario and prints what happened and why.
"""
