"""eventbus in a Starlette or FastAPI application: the bus's lifespan, and each request's
unit of work.

``lifespan(bus)`` runs the bus on the application's event loop: ``astart()`` when the
application starts, ``astop()`` when it stops (which finishes what is in flight). Both
repeat, each start on the loop there is then, so a test suite may run the application
many times (each ``TestClient(app)`` has a loop of its own). Given the application's own
lifespan, it runs inside it: the bus starts after the application's resources are up
and stops before they close, so no handler runs on a closed resource.

``joined_bus(bus, get_session)`` is a FastAPI dependency that gives an endpoint the bus
joined to the request's SQLAlchemy ``Session`` or ``AsyncSession`` (the one your
``get_session`` dependency yields): everything the endpoint publishes, on this bus,
joins that session's transaction. Durable rows are written in it, after-commit handlers
wait for its commit, and an exception that rolls the request back drops both. It is
``bus.transaction(session)`` (or ``bus.atransaction``) around the endpoint: joined when
the session is already in a transaction (begun by your dependency, which then commits
after the endpoint), begun and committed here otherwise.

Only the lifespan is Starlette's (it imports nothing of Starlette at run time); the
dependency needs FastAPI (``pip install "eventbus[fastapi]"``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from eventbus import EventBus
from eventbus.errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from starlette.types import StatelessLifespan

__all__ = ["joined_bus", "lifespan"]

AppT = TypeVar("AppT")


def lifespan(
    bus: EventBus,
    app_lifespan: Callable[[AppT], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[AppT], AbstractAsyncContextManager[Any]]:
    """A lifespan that starts ``bus`` on the application's loop and stops it at shutdown.

    ``FastAPI(lifespan=lifespan(bus))`` or ``Starlette(lifespan=lifespan(bus))``; with a
    lifespan of your own, ``lifespan(bus, your_lifespan)``: yours runs around the bus's
    (what it yields, the application's state, is passed on).
    """
    if not isinstance(bus, EventBus):
        raise ConfigurationError(
            f"lifespan() takes the application's eventbus.EventBus, got {type(bus).__name__}"
        )
    if app_lifespan is not None and not callable(app_lifespan):
        raise ConfigurationError(
            "lifespan(bus, app_lifespan): app_lifespan must be a lifespan function (an "
            f"asynccontextmanager taking the app), got {app_lifespan!r}"
        )

    @asynccontextmanager
    async def run(app: AppT) -> AsyncIterator[Any]:
        if app_lifespan is None:
            async with _running(bus):
                yield None
            return
        async with app_lifespan(app) as state, _running(bus):
            yield state

    return run


@asynccontextmanager
async def _running(bus: EventBus) -> AsyncIterator[None]:
    await bus.astart()
    try:
        yield
    finally:
        await bus.astop()


def joined_bus(bus: EventBus, get_session: Callable[..., Any]) -> Callable[..., Any]:
    """A FastAPI dependency: ``bus``, with the request's session's transaction joined.

    ``get_session`` is your dependency that yields the request's ``Session`` or
    ``AsyncSession`` (FastAPI calls it once per request, so the endpoint asking for the
    session gets the same one)::

        BusInRequest = Annotated[EventBus, Depends(joined_bus(bus, get_session))]

        @app.post("/orders")
        async def place_order(bus: BusInRequest, session: SessionInRequest) -> None:
            session.add(Order(id="o-1"))
            await bus.apublish(OrderPlaced(order_id="o-1"))

    Commit after the endpoint (in ``get_session``, after its ``yield``), never inside
    it: a joined transaction that ends inside the endpoint raises
    ``TransactionScopeError`` and publishes nothing. With a sync ``Session`` the
    savepoint and the outbox rows are written from the event loop (a statement each);
    async applications that mind that use an ``AsyncSession``.
    """
    try:
        from fastapi import Depends  # noqa: PLC0415 - FastAPI is needed here only
    except ImportError as error:  # pragma: no cover - the extra is installed in development
        raise MissingDependencyError(
            'joined_bus() is a FastAPI dependency: pip install "eventbus[fastapi]"'
        ) from error
    if not isinstance(bus, EventBus):
        raise ConfigurationError(
            f"joined_bus() takes the application's eventbus.EventBus, got {type(bus).__name__}"
        )
    if not callable(get_session):
        raise ConfigurationError(
            "joined_bus(bus, get_session): get_session must be the dependency that yields "
            f"the request's session, got {get_session!r}"
        )

    async def bus_in_request(session: Any = Depends(get_session)) -> AsyncIterator[EventBus]:  # noqa: B008 - FastAPI's way to name a dependency
        if _is_async(session):
            async with bus.atransaction(session):
                yield bus
        else:
            with bus.transaction(session):
                yield bus

    bus_in_request.__qualname__ = f"joined_bus({getattr(get_session, '__name__', 'get_session')})"
    return bus_in_request


def _is_async(session: object) -> bool:
    """Whether ``session`` is SQLAlchemy's ``AsyncSession`` or ``AsyncConnection`` (also
    behind an ``async_scoped_session``)."""
    try:
        from sqlalchemy.ext import asyncio  # noqa: PLC0415 - only for a session to look at
    except ImportError:
        return False
    return isinstance(
        session, asyncio.AsyncSession | asyncio.AsyncConnection | asyncio.async_scoped_session
    )


if TYPE_CHECKING:
    # The lifespan fits Starlette's (and so FastAPI's) ``lifespan=`` parameter.
    _fits: Callable[[EventBus], StatelessLifespan[Any]] = lifespan
