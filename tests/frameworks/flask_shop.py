"""A Flask application for ``flask eventbus ...`` in processes of their own
(``flask --app tests.frameworks.flask_shop``): the app factory reads where its database
and tables are from the environment (``FLASK_SHOP_DATABASE``, ``FLASK_SHOP_PREFIX``), so
a command and the test that started it share them.

Its durable handler records each order it ships in ``<prefix>_shipped``, in its own
transaction, so the test sees what another process did; it refuses orders from 500 up,
unless ``FLASK_SHOP_MENDED`` is set (a dead letter, then a replay that succeeds).
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import sqlalchemy as sa
from eventbus_contrib.flask import EventBus
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from eventbus import EventRegistry, RejectEvent, RetryPolicy, event

REGISTRY = EventRegistry()


@event("flaskcli.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@attrs.frozen
class Shop:
    app: Flask
    db: SQLAlchemy
    events: EventBus
    shipped: sa.Table

    def shipped_numbers(self) -> list[int]:
        with self.app.app_context(), self.db.engine.connect() as connection:
            return sorted(connection.execute(sa.select(self.shipped.c.number)).scalars())

    def close(self) -> None:
        with self.app.app_context():
            self.events.bus.close()
            self.db.engine.dispose()


def make_shop(database: str, prefix: str, *, relay: bool = True, **config: Any) -> Shop:
    db = SQLAlchemy()
    events = EventBus(
        db=db, table_prefix=prefix, registry=REGISTRY, retry=RetryPolicy.never(), relay=relay
    )
    shipped = sa.Table(
        f"{prefix}_shipped", db.metadata, sa.Column("number", sa.Integer, primary_key=True)
    )

    @events.subscribe(name="flaskcli.ship", delivery="durable")
    def ship(event: OrderPlaced, session: Session) -> None:
        if event.number >= 500 and not os.environ.get("FLASK_SHOP_MENDED"):
            raise RejectEvent(f"order {event.number} cannot be shipped")
        session.execute(sa.insert(shipped).values(number=event.number))

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database
    app.config.update(config)
    db.init_app(app)
    events.init_app(app)

    @app.post("/orders/<int:number>")
    def place_order(number: int) -> dict[str, int]:
        events.publish(OrderPlaced(number=number), key=str(number))
        db.session.commit()
        return {"number": number}

    with app.app_context():
        db.create_all()
    return Shop(app, db, events, shipped)


def create_app() -> Flask:
    return make_shop(os.environ["FLASK_SHOP_DATABASE"], os.environ["FLASK_SHOP_PREFIX"]).app
