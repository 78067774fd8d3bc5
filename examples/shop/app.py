"""The shop's composition root: one bus, one database, four modules.

Importing this opens the database named by the settings (creating its tables if need
be) and builds the bus; it publishes nothing. The ``eventbus`` command finds the bus here::

    eventbus catalog --app examples.shop.app:bus
    eventbus dlq list --app examples.shop.app:bus

The bus is built from its parts only (outbox, dead letters, retry policy), so settings the
bus reads itself, such as a transport, need no change here.
"""

from __future__ import annotations

import attrs
import tenacity

from eventbus import EventBus, RetryPolicy, SQLiteDeadLetterStore

from .db import Database, open_database
from .inventory.handlers import Inventory
from .notifications.handlers import Notifications
from .notifications.mail_server import MailServer
from .notifications.templates import Templates
from .orders.overview import OrderOverview
from .orders.saga import OrderSaga
from .payments.gateway import CardGateway
from .payments.handlers import Payments
from .schema import TABLES
from .settings import Settings

__all__ = ["Shop", "bus", "create_app", "shop"]

# A retried durable delivery waits in the outbox until its time comes, and the relay
# finds it at its next poll: polling often keeps the scenario's retries within a second.
POLL_INTERVAL = 0.2

DEFAULT_RETRY = RetryPolicy(
    stop=tenacity.stop_after_attempt(5) | tenacity.stop_after_delay(60),
    wait=tenacity.wait_exponential(multiplier=0.1, max=5) + tenacity.wait_random(0, 0.1),
)
"""For after-commit and durable handlers that do not bring their own."""


@attrs.frozen
class Shop:
    settings: Settings
    db: Database
    bus: EventBus
    mail: MailServer


def create_app(settings: Settings) -> Shop:
    db = open_database(settings)
    bus = EventBus(
        outbox=db.make_outbox(poll_interval=POLL_INTERVAL),
        dead_letters=SQLiteDeadLetterStore(settings.dead_letters_path),
        retry=DEFAULT_RETRY,
    )
    db.create_tables(TABLES.values())
    mail = MailServer(db)
    # Subscription order is dispatch order: the inline check runs first on OrderPlaced.
    Inventory(bus, db).subscribe()
    OrderSaga(bus, db).subscribe()
    OrderOverview(bus, db).subscribe()
    Payments(bus, db, CardGateway()).subscribe()
    Notifications(bus, mail, Templates(settings.templates_dir)).subscribe()
    return Shop(settings=settings, db=db, bus=bus, mail=mail)


shop = create_app(Settings.from_environment())
bus = shop.bus
"""For the command line: ``eventbus ... --app examples.shop.app:bus``."""
