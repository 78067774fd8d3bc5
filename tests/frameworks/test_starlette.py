"""``eventbus_contrib.starlette`` with the real FastAPI, Starlette and their clients, on
PostgreSQL (skipped when it does not answer, failed under CI=true).

The promises a FastAPI user relies on: an endpoint's publish rolls back with the
request's transaction (nothing written, no handler run); after a commit, the
after-commit and durable handlers run, and they see the committed rows; the lifespan
runs the bus on the application's loop and may run again (several ``TestClient(app)``
in one test session); a sync ``Session`` and an ``AsyncSession`` are joined alike,
through ``TestClient`` and through ``httpx.AsyncClient``.
"""

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import attrs
import pytest
import sqlalchemy as sa
from eventbus_contrib.starlette import joined_bus, lifespan
from fastapi import Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from eventbus import EventBus, EventRegistry, RetryPolicy, TransactionScopeError, event
from eventbus.errors import ConfigurationError

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
# which name aliases local to the functions that build the applications.

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)

REGISTRY = EventRegistry()


@event("web.order_placed", registry=REGISTRY)
class OrderPlaced:
    number: int


@attrs.define
class Seen:
    """What the handlers saw: each number, and whether its order was committed then."""

    after_commit: list[tuple[int, bool]] = attrs.field(factory=list)
    durable: list[tuple[int, bool]] = attrs.field(factory=list)
    loops: set[int] = attrs.field(factory=set)


@attrs.frozen
class Shop:
    bus: EventBus
    engine: sa.Engine
    orders: sa.Table
    seen: Seen

    def committed(self) -> list[int]:
        with self.engine.connect() as connection:
            return list(connection.execute(sa.select(self.orders.c.number)).scalars())

    def outbox_rows(self) -> int:
        outbox = self.bus.outbox
        assert outbox is not None
        return outbox.status().pending


@pytest.fixture
def shop(engine: sa.Engine, prefix: str) -> Iterator[Shop]:
    from eventbus_contrib.sqlalchemy import SQLAlchemyOutbox

    orders = sa.Table(
        f"{prefix}_orders", sa.MetaData(), sa.Column("number", sa.Integer, primary_key=True)
    )
    outbox = SQLAlchemyOutbox(engine, prefix=prefix, poll_interval=0.05)
    orders.metadata.create_all(engine)
    bus = EventBus(registry=REGISTRY, outbox=outbox, retry=RetryPolicy.never())
    made = Shop(bus, engine, orders, Seen())

    def committed(number: int) -> bool:
        return number in made.committed()

    @bus.subscribe(name="web.mail", delivery="after_commit")
    async def mail(event: OrderPlaced) -> None:
        import asyncio

        made.seen.loops.add(id(asyncio.get_running_loop()))
        made.seen.after_commit.append((event.number, committed(event.number)))

    @bus.subscribe(name="web.ship", delivery="durable")
    def ship(event: OrderPlaced) -> None:
        made.seen.durable.append((event.number, committed(event.number)))

    yield made
    bus.close()
    outbox.close()


def fastapi_app(shop: Shop) -> FastAPI:
    """The recipe of the README: a session per request, committed after the endpoint."""

    def get_session() -> Iterator[Session]:
        with Session(shop.engine) as session, session.begin():
            yield session

    SessionInRequest = Annotated[Session, Depends(get_session)]
    BusInRequest = Annotated[EventBus, Depends(joined_bus(shop.bus, get_session))]
    app = FastAPI(lifespan=lifespan(shop.bus))

    @app.post("/orders/{number}")
    def place_order(number: int, bus: BusInRequest, session: SessionInRequest) -> dict[str, int]:
        session.add_all([])  # the session is the request's: the same the bus joined
        session.execute(sa.insert(shop.orders).values(number=number))
        bus.publish(OrderPlaced(number=number), key=str(number))
        if number >= 900:
            raise HTTPException(status_code=409, detail="refused after the publish")
        return {"number": number}

    @app.post("/async-orders/{number}")
    async def place_async(
        number: int, bus: BusInRequest, session: SessionInRequest
    ) -> dict[str, int]:
        session.execute(sa.insert(shop.orders).values(number=number))
        await bus.apublish(OrderPlaced(number=number), key=str(number))
        if number >= 900:
            raise RuntimeError("the endpoint failed after the publish")
        return {"number": number}

    @app.post("/commits-inside/{number}")
    def commits_inside(number: int, bus: BusInRequest, session: SessionInRequest) -> None:
        bus.publish(OrderPlaced(number=number))
        session.commit()  # the owner's job: refused, and nothing published

    return app


def test_a_committed_request_delivers_after_the_commit(shop: Shop) -> None:
    with TestClient(fastapi_app(shop)) as client:
        assert client.post("/orders/1").json() == {"number": 1}
        assert client.post("/async-orders/2").json() == {"number": 2}
        shop.bus.drain(timeout=30)  # (from the test's thread: the app's loop is the client's)
    assert sorted(shop.committed()) == [1, 2]
    # Both handlers ran for both orders, after the commit: they saw the order's row.
    assert sorted(shop.seen.after_commit) == [(1, True), (2, True)]
    assert sorted(shop.seen.durable) == [(1, True), (2, True)]
    assert shop.outbox_rows() == 0


def test_a_publish_rolls_back_with_the_request(shop: Shop) -> None:
    with TestClient(fastapi_app(shop), raise_server_exceptions=False) as client:
        assert client.post("/orders/901").status_code == 409  # HTTPException after publish
        assert client.post("/async-orders/902").status_code == 500  # any exception
        assert client.post("/orders/3").status_code == 200
        shop.bus.drain(timeout=30)
    assert shop.committed() == [3]
    assert shop.outbox_rows() == 0  # the rolled-back requests wrote no outbox row
    assert shop.seen.after_commit == [(3, True)]
    assert shop.seen.durable == [(3, True)]


def test_a_commit_inside_the_endpoint_is_refused_and_publishes_nothing(shop: Shop) -> None:
    with TestClient(fastapi_app(shop)) as client, pytest.raises(TransactionScopeError):
        client.post("/commits-inside/4")
    shop.bus.drain(timeout=30)
    assert shop.seen.after_commit == shop.seen.durable == []
    assert shop.outbox_rows() == 0


def test_the_lifespan_restarts_the_bus_for_every_client(shop: Shop) -> None:
    app = fastapi_app(shop)
    for number in (11, 12, 13):  # each TestClient runs the app on a loop of its own
        with TestClient(app) as client:
            assert client.post(f"/orders/{number}").status_code == 200
            shop.bus.drain(timeout=30)
    assert sorted(shop.seen.after_commit) == [(11, True), (12, True), (13, True)]
    assert sorted(shop.seen.durable) == [(11, True), (12, True), (13, True)]
    # The async handler ran on each client's loop, the application's own.
    assert len(shop.seen.loops) == 3


def test_the_application_lifespan_surrounds_the_bus(shop: Shop) -> None:
    steps: list[str] = []

    @asynccontextmanager
    async def resources(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        steps.append("resources up")
        yield {"greeting": "hello"}
        steps.append(f"resources down, bus stopped first: {not shop.bus._life._runtime.running}")

    app = FastAPI(lifespan=lifespan(shop.bus, resources))

    @app.get("/")
    def home(request: Request) -> dict[str, Any]:
        return {"greeting": request.state.greeting, "running": shop.bus._life._runtime.running}

    with TestClient(app) as client:
        assert client.get("/").json() == {"greeting": "hello", "running": True}
    assert steps == ["resources up", "resources down, bus stopped first: True"]


@pytest.fixture
def async_engine(backend: Any) -> Iterator[Any]:
    from sqlalchemy.ext.asyncio import create_async_engine

    made = create_async_engine(backend.url)
    yield made
    from tests.servers import run_coroutine

    run_coroutine(made.dispose())


async def test_an_async_session_is_joined_through_httpx(shop: Shop, async_engine: Any) -> None:
    httpx = pytest.importorskip("httpx2", reason="httpx2 is in the dev extra")
    from sqlalchemy.ext.asyncio import AsyncSession

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with AsyncSession(async_engine) as session, session.begin():
            yield session

    SessionInRequest = Annotated[AsyncSession, Depends(get_session)]
    BusInRequest = Annotated[EventBus, Depends(joined_bus(shop.bus, get_session))]
    app = FastAPI(lifespan=lifespan(shop.bus))

    @app.post("/orders/{number}")
    async def place_order(
        number: int, bus: BusInRequest, session: SessionInRequest
    ) -> dict[str, int]:
        await session.execute(sa.insert(shop.orders).values(number=number))
        await bus.apublish(OrderPlaced(number=number), key=str(number))
        if number >= 900:
            raise HTTPException(status_code=422, detail="rolled back")
        return {"number": number}

    # httpx's ASGI transport runs no lifespan: the test runs it, on this loop.
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://shop") as client,
    ):
        assert (await client.post("/orders/21")).status_code == 200
        assert (await client.post("/orders/921")).status_code == 422
        await shop.bus.adrain(timeout=30)
    assert shop.committed() == [21]
    assert shop.seen.after_commit == [(21, True)]
    assert shop.seen.durable == [(21, True)]
    assert shop.outbox_rows() == 0


def test_a_starlette_app_runs_the_bus_in_its_lifespan(shop: Shop) -> None:
    def place(request: Request) -> JSONResponse:
        number = int(request.path_params["number"])
        with Session(shop.engine) as session, shop.bus.transaction(session):
            session.execute(sa.insert(shop.orders).values(number=number))
            shop.bus.publish(OrderPlaced(number=number))
        return JSONResponse({"number": number, "thread": threading.current_thread().name})

    app = Starlette(routes=[Route("/orders/{number}", place, methods=["POST"])])
    app = Starlette(
        routes=[Route("/orders/{number}", place, methods=["POST"])], lifespan=lifespan(shop.bus)
    )
    with TestClient(app) as client:
        assert client.post("/orders/31").json()["number"] == 31
        shop.bus.drain(timeout=30)
    assert shop.seen.after_commit == [(31, True)]
    assert shop.seen.durable == [(31, True)]


def test_bad_arguments_are_refused_with_the_fix(shop: Shop) -> None:
    with pytest.raises(ConfigurationError, match=r"eventbus\.EventBus"):
        lifespan(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lifespan function"):
        lifespan(shop.bus, "not a lifespan")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"eventbus\.EventBus"):
        joined_bus(object(), lambda: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="yields the request's session"):
        joined_bus(shop.bus, "get_session")  # type: ignore[arg-type]
