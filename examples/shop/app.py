"""The shop, built from the environment's settings: what the ``eventbus`` command loads.

    eventbus catalog --app examples.shop.app:bus
    eventbus dlq list --app examples.shop.app:bus

Importing this opens the database that ``SHOP_DATABASE_URL`` (or the data folder) names
and creates its tables if need be; it publishes nothing. Code that builds its own shop
(the tests) imports ``wiring.create_app`` instead.
"""

from __future__ import annotations

from .settings import Settings
from .wiring import create_app

__all__ = ["bus", "shop"]

shop = create_app(Settings.from_environment())
bus = shop.bus
"""For the command line: ``eventbus ... --app examples.shop.app:bus``."""
