"""``eventbus_contrib.flask`` with the real Flask, Flask-SQLAlchemy and Flask's test client
and CLI runner, on a SQLite file and on PostgreSQL (skipped when it does not answer,
failed under CI=true).

What a Flask user relies on: a view's publish joins ``db.session``'s transaction (the
view's commit delivers, after the commit; a rollback, the view's or the one at the end of
a request that never committed, drops it, outbox row and all); the bus of each app comes
from its ``app.config``; ``flask eventbus dlq|outbox|worker|catalog`` runs eventbus's
command line on the app's bus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from eventbus_contrib.flask import EventBus
from flask import Flask, abort
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Session

from eventbus import ConfigurationError, EventRegistry, RetryPolicy, event

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

REGISTRY = EventRegistry()


@event("flask.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@attrs.define
class Seen:
    after_commit: list[tuple[int, bool]] = attrs.field(factory=list)
    durable: list[tuple[int, bool]] = attrs.field(factory=list)


@attrs.frozen
class Shop:
    app: Flask
    db: SQLAlchemy
    events: EventBus
    orders: sa.Table
    seen: Seen

    def committed(self) -> list[int]:
        with self.app.app_context(), self.db.engine.connect() as connection:
            return sorted(connection.execute(sa.select(self.orders.c.number)).scalars())

    def pending(self) -> int:
        with self.app.app_context():
            outbox = self.events.bus.outbox
            assert outbox is not None
            return outbox.status().pending

    def drain(self) -> None:
        with self.app.app_context():
            self.events.bus.drain(timeout=30)


def make_shop(backend: Any, prefix: str, **config: Any) -> Shop:
    """The app factory of a Flask user, with its module-level extensions made here."""
    db = SQLAlchemy()
    events = EventBus(db=db, table_prefix=prefix, registry=REGISTRY, retry=RetryPolicy.never())
    orders = sa.Table(
        f"{prefix}_orders", db.metadata, sa.Column("number", sa.Integer, primary_key=True)
    )
    seen = Seen()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = backend.url
    app.config.update(config)
    db.init_app(app)
    events.init_app(app)
    with app.app_context():
        db.create_all()

    def committed(number: int) -> bool:
        with db.engine.connect() as connection:
            found = connection.execute(sa.select(orders.c.number).where(orders.c.number == number))
            return found.first() is not None

    @events.subscribe(name="flask.mail", delivery="after_commit")
    def mail(event: OrderPlaced) -> None:
        with app.app_context():
            seen.after_commit.append((event.number, committed(event.number)))

    @events.subscribe(name="flask.ship", delivery="durable")
    def ship(event: OrderPlaced, session: Session) -> None:
        session.execute(sa.text("SELECT 1"))  # the handler's own transaction, exactly once
        with app.app_context():
            seen.durable.append((event.number, committed(event.number)))

    @app.post("/orders/<int:number>")
    def place_order(number: int) -> dict[str, int]:
        db.session.execute(sa.insert(orders).values(number=number))
        events.publish(OrderPlaced(number=number), key=str(number))
        if number >= 900:
            abort(409)  # after the publish, before the commit: nothing stays
        if number >= 800:
            db.session.rollback()
            return {"rolled back": number}
        db.session.commit()
        return {"number": number}

    @app.post("/blocks/<int:number>")
    def in_a_block(number: int) -> dict[str, int]:
        with events.transaction() as session:  # one savepoint for both
            for each in (number, number + 1):
                session.execute(sa.insert(orders).values(number=each))
                events.publish(OrderPlaced(number=each))
        return {"number": number}

    return Shop(app, db, events, orders, seen)


@pytest.fixture
def shop(backend: Any, prefix: str, make_engine: Any) -> Iterator[Shop]:
    del make_engine  # its teardown drops every table named with the prefix
    made = make_shop(backend, prefix)
    yield made
    with made.app.app_context():
        made.events.bus.close()
        made.db.engine.dispose()


def test_a_view_commit_delivers_after_the_commit(shop: Shop) -> None:
    client = shop.app.test_client()
    assert client.post("/orders/1").json == {"number": 1}
    assert client.post("/blocks/10").json == {"number": 10}
    shop.drain()
    assert shop.committed() == [1, 10, 11]
    assert sorted(shop.seen.after_commit) == [(1, True), (10, True), (11, True)]
    assert sorted(shop.seen.durable) == [(1, True), (10, True), (11, True)]
    assert shop.pending() == 0


def test_a_rollback_drops_the_publish(shop: Shop) -> None:
    client = shop.app.test_client()
    assert client.post("/orders/901").status_code == 409  # never committed: removed
    assert client.post("/orders/801").json == {"rolled back": 801}  # the view's rollback
    assert client.post("/orders/2").status_code == 200
    shop.drain()
    assert shop.committed() == [2]
    assert shop.pending() == 0
    assert shop.seen.after_commit == [(2, True)]
    assert shop.seen.durable == [(2, True)]


def test_each_app_has_its_bus_from_its_config(backend: Any, prefix: str, make_engine: Any) -> None:
    del make_engine
    shop = make_shop(backend, prefix, EVENTBUS_GROUP="billing", EVENTBUS_MAX_DELIVERIES=3)
    other = make_shop(backend, prefix)
    with shop.app.app_context():
        bus = shop.events.bus
        assert bus is shop.events.bus  # built once per app
        assert [h.name for h in bus.handlers_for(OrderPlaced)] == ["flask.mail", "flask.ship"]
    with other.app.app_context():
        assert other.events.bus is not bus
    for made in (shop, other):
        with made.app.app_context():
            made.events.bus.close()
            made.db.engine.dispose()


def test_bad_config_is_refused_with_the_fix(backend: Any, prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="did you mean EVENTBUS_TRANSPORT_URL"):
        make_shop(backend, prefix, EVENTBUS_TRANSPRT_URL="redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match=r"app\.config\['EVENTBUS_GROUP'\]"):
        EventBus(group="billing")
    app = Flask("bare")
    with app.app_context(), pytest.raises(ConfigurationError, match="init_app"):
        EventBus().bus  # noqa: B018 - the property is what raises
    with pytest.raises(ConfigurationError, match="application context"):
        EventBus().bus  # noqa: B018


def test_flask_eventbus_runs_the_command_line_on_the_apps_bus(shop: Shop) -> None:
    client = shop.app.test_client()
    assert client.post("/orders/3").status_code == 200
    shop.drain()
    runner = shop.app.test_cli_runner()

    status = runner.invoke(args=["eventbus", "outbox", "status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["pending"] == 0

    catalog = runner.invoke(args=["eventbus", "catalog"])
    assert catalog.exit_code == 0, catalog.output
    assert "flask.order_placed v1" in catalog.output
    assert "flask.ship  [durable]" in catalog.output

    listed = runner.invoke(args=["eventbus", "dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == []

    worker = runner.invoke(args=["eventbus", "worker"])
    assert worker.exit_code == 2
    assert "has no transport" in worker.output

    refused = runner.invoke(args=["eventbus", "dlq", "list", "--app", "x:bus"])
    assert refused.exit_code == 2
    assert "flask --app" in refused.output
