"""A minimal FastAPI application on eventbus: orders, a receipt written exactly once by a
durable handler, and an announcement after the commit.

    pip install -e ".[fastapi,sqlalchemy]"      # and "postgres" for PostgreSQL
    uvicorn examples.fastapi_orders:app         # or any ASGI server
    curl -X POST 'http://127.0.0.1:8000/orders/o-1?total_cents=990'

``ORDERS_DATABASE_URL`` names the database (a SQLite file under ``var/`` by default;
``postgresql+psycopg://user@host/db`` for PostgreSQL). The outbox and the dead letters
live in it, beside the orders. A publish in an endpoint joins the request's transaction
(``joined_bus``): an order refused after its publish leaves neither the order nor the
event behind. ``tests/examples/test_fastapi_orders.py`` runs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
from eventbus_contrib.sqlalchemy import SQLAlchemyDeadLetterStore, SQLAlchemyOutbox
from eventbus_contrib.starlette import joined_bus, lifespan
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import eventbus
from eventbus import EventBus

DATABASE_URL = os.environ.get("ORDERS_DATABASE_URL") or "sqlite:///var/fastapi_orders.sqlite3"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    total_cents: Mapped[int]


class Receipt(Base):
    __tablename__ = "receipts"
    order_id: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


@eventbus.event("orders.order_placed")
class OrderPlaced:
    order_id: str
    total_cents: int


if DATABASE_URL.startswith("sqlite:///"):
    Path(DATABASE_URL.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
engine = sa.create_engine(DATABASE_URL)
# The stores first: on SQLite they set up the engine that sessions then use.
bus = EventBus(outbox=SQLAlchemyOutbox(engine), dead_letters=SQLAlchemyDeadLetterStore(engine))
Base.metadata.create_all(engine)
announced: list[str] = []
"""What the after-commit handler announced (it stands for an email)."""


@bus.subscribe(delivery="durable")
def write_receipt(event: OrderPlaced, session: Session) -> None:
    # In a transaction of its own, with the handler's inbox mark: exactly once.
    text = f"order {event.order_id}: {event.total_cents / 100:.2f} EUR"
    session.add(Receipt(order_id=event.order_id, text=text))


@bus.subscribe(delivery="after_commit")
async def announce(event: OrderPlaced) -> None:
    announced.append(event.order_id)  # only ever for a committed order


def get_session() -> Iterator[Session]:
    with Session(engine) as session, session.begin():  # commits after the endpoint
        yield session


SessionInRequest = Annotated[Session, Depends(get_session)]
BusInRequest = Annotated[EventBus, Depends(joined_bus(bus, get_session))]
app = FastAPI(title="orders", lifespan=lifespan(bus))


@app.post("/orders/{order_id}", status_code=201)
def place_order(
    order_id: str, total_cents: int, session: SessionInRequest, bus: BusInRequest
) -> dict[str, str]:
    if session.get(Order, order_id) is not None:
        raise HTTPException(status_code=409, detail=f"order {order_id} exists")
    session.add(Order(id=order_id, total_cents=total_cents))
    bus.publish(OrderPlaced(order_id=order_id, total_cents=total_cents), key=order_id)
    if total_cents <= 0:
        # After the publish on purpose: the request rolls back, the event with it.
        raise HTTPException(status_code=422, detail="an order costs something")
    return {"order_id": order_id}


@app.get("/orders/{order_id}")
def show_order(order_id: str, session: SessionInRequest) -> dict[str, object]:
    order = session.get(Order, order_id)
    if order is None:
        raise HTTPException(status_code=404, detail=f"no order {order_id}")
    receipt = session.get(Receipt, order_id)
    return {
        "order_id": order.id,
        "total_cents": order.total_cents,
        "receipt": None if receipt is None else receipt.text,
        "announced": order_id in announced,
    }
