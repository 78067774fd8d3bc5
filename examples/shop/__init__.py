"""A small shop monolith whose modules talk only through events.

Each module (orders, inventory, payments, notifications) owns its state and its events;
none imports another's internals. ``app.create_app()`` wires them onto one bus, and
``python -m examples.shop`` runs a scripted scenario and prints what happened.
"""
