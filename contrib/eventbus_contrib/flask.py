"""eventbus as a Flask extension: ``EventBus()`` and ``init_app``, joined to
Flask-SQLAlchemy's session, with ``flask eventbus ...`` on Flask's command line.

    events = EventBus(db=db)                 # module level, like db = SQLAlchemy()

    @events.subscribe(delivery="durable")
    def reserve_stock(event: OrderPlaced, session: Session) -> None: ...

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://..."
        db.init_app(app)
        events.init_app(app)                 # after db: the stores use db's engine
        return app

    @bp.post("/orders")
    def place_order():
        db.session.add(Order(id="o-1"))
        events.publish(OrderPlaced(order_id="o-1"))   # joins db.session's transaction
        db.session.commit()                           # the event commits with the order

Each application gets a bus of its own (an app factory in tests makes one per test),
built on first use from ``app.config`` (``EVENTBUS_TRANSPORT_URL``, ``EVENTBUS_GROUP``,
``EVENTBUS_MAX_DELIVERIES``, ``EVENTBUS_WORKER``: the settings' own names) and the
extension's keyword arguments, with its outbox and its dead letters in Flask-SQLAlchemy's
database (``SQLAlchemyOutbox`` and ``SQLAlchemyDeadLetterStore`` on ``db.engine``).
Handlers subscribed to the extension are subscribed to every application's bus.

``events.publish`` inside a request joins ``db.session``'s open transaction (a savepoint
in it, the outbox rows written there): the view's ``db.session.commit()`` commits the
event with the data, after-commit handlers wait for that commit, and a rollback (the
view's, or Flask-SQLAlchemy's at the end of a request that did not commit) drops both.
With no transaction open on ``db.session`` it publishes as ``bus.publish`` does.
"""

from __future__ import annotations

import contextvars
import difflib
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, overload

import click
from flask import Flask, current_app, has_app_context
from flask.cli import with_appcontext

import eventbus
from eventbus.errors import ConfigurationError

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session, scoped_session

    from eventbus import RetryPolicy
    from eventbus.typing import DeadLetterStore, EventInstance, OutboxStore

__all__ = ["EventBus", "current_bus"]

F = TypeVar("F", bound=Callable[..., Any])

SETTINGS = {
    "EVENTBUS_TRANSPORT_URL": "transport_url",
    "EVENTBUS_GROUP": "group",
    "EVENTBUS_MAX_DELIVERIES": "max_deliveries",
    "EVENTBUS_WORKER": "worker",
}
"""The ``app.config`` keys the extension reads: eventbus's settings, by their own names."""
_NOT_SETTINGS = frozenset({"EVENTBUS_APP", "EVENTBUS_IGNORE"})
_EXTENSION = "eventbus"

_in_block: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "eventbus_flask_in_block", default=False
)


_Stores = tuple["OutboxStore | None", "DeadLetterStore | None"]


class _AppState:
    """One application's part: its config, its stores, and its bus once built."""

    def __init__(self, settings: dict[str, Any], make_stores: Callable[[], _Stores]) -> None:
        self.settings = settings
        self.make_stores = make_stores
        self.stores: _Stores | None = make_stores()  # now: SQLite sets up the engine
        self.bus: eventbus.EventBus | None = None
        self.lock = threading.Lock()


class EventBus:
    """The eventbus Flask extension.

    ``db``: Flask-SQLAlchemy's ``SQLAlchemy`` (given here or to ``init_app``): the
    outbox and the dead letters live in its database, and publishes join its session.
    Without it the bus has no outbox (no durable handlers) and keeps dead letters in
    memory, unless ``outbox=`` or ``dead_letters=`` give factories (called with the
    app). ``table_prefix`` names the stores' tables (``eventbus_outbox``, ...). Any
    other keyword argument is ``eventbus.EventBus``'s (``retry``, ``registry``,
    ``shutdown_timeout``, ...), for every application's bus.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        table_prefix: str = "eventbus",
        outbox: Callable[[Flask], OutboxStore] | None = None,
        dead_letters: Callable[[Flask], DeadLetterStore] | None = None,
        **options: Any,
    ) -> None:
        for refused in ("transport_url", "group", "max_deliveries", "worker"):
            if refused in options:
                raise ConfigurationError(
                    f"{refused} is a setting: give it as app.config['EVENTBUS_"
                    f"{refused.upper()}'] (or the environment), not to the extension"
                )
        for unused in ("outbox", "dead_letters", "transport"):
            if unused in options:  # pragma: no cover - keyword names above take them
                raise ConfigurationError(f"{unused} is not an option here")
        self._db = db
        self._prefix = table_prefix
        self._outbox_factory = outbox
        self._dead_letters_factory = dead_letters
        self._options = options
        self._subscriptions: list[tuple[Callable[..., Any], Any, dict[str, Any]]] = []
        self._buses: list[eventbus.EventBus] = []
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    # -- applications --------------------------------------------------------------------

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        """Set up ``app``: read its ``EVENTBUS_*`` config, open the stores on its
        database (before any session, as SQLite needs), add ``flask eventbus``."""
        if _EXTENSION in app.extensions:
            raise ConfigurationError(f"eventbus is set up on {app.name!r} already")
        db = db if db is not None else self._db
        self._db = db
        settings = _settings(app.config)

        def make_stores() -> _Stores:
            outbox = dead_letters = None
            with app.app_context():
                if self._outbox_factory is not None:
                    outbox = self._outbox_factory(app)
                elif db is not None:
                    outbox = _sqlalchemy().SQLAlchemyOutbox(db.engine, prefix=self._prefix)
                if self._dead_letters_factory is not None:
                    dead_letters = self._dead_letters_factory(app)
                elif db is not None:
                    dead_letters = _sqlalchemy().SQLAlchemyDeadLetterStore(
                        db.engine, prefix=self._prefix
                    )
            return outbox, dead_letters

        app.extensions[_EXTENSION] = _AppState(settings, make_stores)
        app.extensions[f"{_EXTENSION}.extension"] = self
        app.cli.add_command(command)

    @property
    def bus(self) -> eventbus.EventBus:
        """The current application's bus (built on first use): for ``drain``,
        ``dead_letters``, ``replay``, ``start``, ``close`` and the rest."""
        if not has_app_context():
            raise ConfigurationError(
                "events.bus needs an application context: inside a request, a CLI "
                "command, or 'with app.app_context():'"
            )
        return self.bus_for(current_app)

    def bus_for(self, app: Flask) -> eventbus.EventBus:
        """``app``'s bus, built on first use from its config (and again, with stores
        opened again, after it was closed: ``flask eventbus`` closes what it used)."""
        state = app.extensions.get(_EXTENSION)
        if not isinstance(state, _AppState):
            raise ConfigurationError(
                f"eventbus is not set up on the Flask app {app.name!r}: call "
                "events.init_app(app) in your app factory"
            )
        with state.lock:
            if state.bus is None or state.bus.closed:
                state.bus = self._build(state)
            return state.bus

    def _build(self, state: _AppState) -> eventbus.EventBus:
        stores, state.stores = state.stores, None
        outbox, dead_letters = state.make_stores() if stores is None else stores
        options = dict(self._options)
        if outbox is not None:
            options["outbox"] = outbox
        if dead_letters is not None:
            options["dead_letters"] = dead_letters
        bus = eventbus.EventBus(**options, **state.settings)
        with self._lock:
            for fn, event_type, keywords in self._subscriptions:
                _subscribe(bus, fn, event_type, keywords)
            self._buses.append(bus)
        return bus

    # -- subscribing -----------------------------------------------------------------------

    @overload
    def subscribe(
        self,
        event_type: type[Any] | types.UnionType,
        /,
        *,
        name: str | None = None,
        delivery: eventbus.Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]: ...

    @overload
    def subscribe(
        self,
        handler: F,
        /,
        *,
        name: str | None = None,
        delivery: eventbus.Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> F: ...

    @overload
    def subscribe(
        self,
        *,
        name: str | None = None,
        delivery: eventbus.Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]: ...

    def subscribe(  # type: ignore[misc] # as EventBus.subscribe: overload 3's F is return-only
        self,
        target: Any = None,
        /,
        *,
        name: str | None = None,
        delivery: eventbus.Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Any:
        """``EventBus.subscribe`` for every application's bus (those built already, and
        those built later)."""
        keywords = {"name": name, "delivery": delivery, "retry": retry}
        if target is not None and not _is_type_spec(target):
            return self._add(target, None, keywords)

        def decorator(handler: F) -> F:
            return self._add(handler, target, keywords)

        return decorator

    def _add(self, fn: F, event_type: Any, keywords: dict[str, Any]) -> F:
        with self._lock:
            self._subscriptions.append((fn, event_type, keywords))
            buses = list(self._buses)
        for bus in buses:
            if not bus.closed:
                _subscribe(bus, fn, event_type, keywords)
        return fn

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        event: EventInstance,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``bus.publish`` on the current application's bus, in ``db.session``'s open
        transaction if there is one (it commits and rolls back with it)."""
        bus = self.bus
        session = self._open_session()
        if session is None:
            bus.publish(event, key=key, headers=headers)
            return
        with bus.transaction(session):
            bus.publish(event, key=key, headers=headers)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """``bus.transaction(db.session)``: one unit of work for many publishes (one
        savepoint rather than one each). Joins ``db.session``'s open transaction, or
        begins one and commits it at the end of the block."""
        db = self._needs_db("events.transaction()")
        bus = self.bus
        token = _in_block.set(True)
        try:
            with bus.transaction(db.session):
                yield db.session()
        finally:
            _in_block.reset(token)

    def _open_session(self) -> scoped_session[Any] | None:
        """``db.session`` when it holds a session with an open transaction here, and no
        ``events.transaction()`` block is around this publish already."""
        db = self._db
        if db is None or _in_block.get():
            return None
        session = db.session
        if not session.registry.has():
            return None
        return session if session().in_transaction() else None

    def _needs_db(self, what: str) -> SQLAlchemy:
        if self._db is None:
            raise ConfigurationError(
                f"{what} joins Flask-SQLAlchemy's session: give the extension db= "
                "(EventBus(db=db), or events.init_app(app, db=db))"
            )
        return self._db


def current_bus() -> eventbus.EventBus:
    """The bus of the Flask application in the current app context (``flask eventbus``
    hands this to ``eventbus --app``)."""
    extension = current_app.extensions.get(f"{_EXTENSION}.extension")
    if not isinstance(extension, EventBus):
        raise ConfigurationError(
            f"eventbus is not set up on the Flask app {current_app.name!r}: call "
            "events.init_app(app) in your app factory"
        )
    return extension.bus_for(current_app)


_CURRENT = "eventbus_contrib.flask:current_bus"


@click.command(
    "eventbus",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("arguments", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def command(arguments: tuple[str, ...]) -> None:
    """eventbus's command line on this app's bus: worker, relay, dlq, outbox, catalog
    (flask eventbus --help)."""
    from eventbus.cli import main  # noqa: PLC0415 - the command line, when it is asked for

    given = list(arguments)
    if any(argument == "--app" or argument.startswith("--app=") for argument in given):
        raise click.UsageError(
            "flask eventbus uses the bus of the Flask app (name it with flask --app); "
            "drop eventbus's --app"
        )
    if given and given[0] not in ("-h", "--help", "--version"):
        given += ["--app", _CURRENT]
    sys.exit(main(given))


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings ``config`` gives, as keyword arguments; an ``EVENTBUS_*`` key that
    is none of them is refused (with what it may have meant)."""
    found: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith("EVENTBUS_") or key in _NOT_SETTINGS:
            continue
        name = SETTINGS.get(key)
        if name is None:
            close = difflib.get_close_matches(key, list(SETTINGS), n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigurationError(
                f"app.config[{key!r}] is not an eventbus setting{hint}; the settings are "
                f"{', '.join(SETTINGS)}"
            )
        if value is not None:
            found[name] = value
    return found


def _subscribe(
    bus: eventbus.EventBus, fn: Callable[..., Any], event_type: Any, keywords: dict[str, Any]
) -> None:
    if event_type is None:
        bus.subscribe(fn, **keywords)
    else:
        bus.subscribe(event_type, **keywords)(fn)


def _is_type_spec(target: object) -> bool:
    import typing  # noqa: PLC0415

    return isinstance(target, type | types.UnionType) or typing.get_origin(target) is typing.Union


def _sqlalchemy() -> Any:
    """``eventbus_contrib.sqlalchemy``: the stores in Flask-SQLAlchemy's database."""
    from . import sqlalchemy  # noqa: PLC0415 - SQLAlchemy comes with Flask-SQLAlchemy

    return sqlalchemy
