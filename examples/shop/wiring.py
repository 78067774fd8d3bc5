"""The shop's composition: one bus, one database, four modules, wired by ``create_app``.

Building the bus from its parts only (outbox, dead letters, retry policy) leaves the
settings the bus reads itself, such as a transport, to the environment: they need no
change here. ``app`` holds the instance the ``eventbus`` command loads.
"""

from __future__ import annotations

import attrs
import tenacity

from eventbus import EventBus, RetryPolicy

from .db import Database, open_database
from .flow import FlowRecorder
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

__all__ = ["Shop", "create_app"]

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
    flow: FlowRecorder

    def close(self) -> None:
        """Finish the bus's work in flight, write the flow recorded, then close the stores
        ``create_app`` opened (the bus leaves them to whoever made them) and the database."""
        self.bus.close()
        self.flow.close()
        if self.bus.outbox is not None:
            self.bus.outbox.close()
        self.bus.dead_letters.close()
        self.db.close()


def create_app(settings: Settings) -> Shop:
    """Open the database (creating its tables if need be), build the bus, subscribe
    every module's handlers, record the event flow. Publishes nothing."""
    db = open_database(settings)
    bus = EventBus(
        outbox=db.make_outbox(poll_interval=POLL_INTERVAL),
        dead_letters=db.make_dead_letters(settings),
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
    # In every process that builds the shop: workers and the eventbus command record too.
    flow = FlowRecorder(bus, db)
    return Shop(settings=settings, db=db, bus=bus, mail=mail, flow=flow)
