"""EventBus: subscribe, publish, apublish, and the dispatch table behind them.

The inline path is the hot path. Per event class the bus precomputes a *route* on the
first publish (and again after any subscribe, unsubscribe or hook change), so a publish
is one dict lookup and then plain calls. A cached route is a triple
``(functions, mode, route)``, unpacked in one step, where ``mode`` is:

- ``_PLAIN``: only inline handlers of the right colour (sync for ``publish``, async for
  ``apublish``), nothing observes, causation is not tracked. Nothing is built: no
  envelope, no UUID, no timestamp, no contextvar.
- ``_TRACKED``: the same, but causation is tracked (a handler somewhere on the bus can see
  an envelope, so a nested publish must learn its cause). The publish sets the current
  frame (a three-item list) around the calls; envelopes stay lazy.
- ``_GENERAL``: everything else (hooks or captures connected, handlers that take the
  envelope, mixed sync and async handlers, other deliveries, a key or headers given).

The mode is an int rather than the route's class because unpacking a tuple and testing
an int is cheaper than reading ``__class__``, which CPython 3.11 does not specialise.
These tricks stay in this module; an inline handler with a retry policy of its own takes
the general path, whose attempt loop is the pipeline's (``_delivery.Attempts``).

The bus is the one object users hold, and nothing below it receives it. It owns the
dispatch table and the hot path; what runs beside the publisher is its ``Lifecycle``
(runtime, relay, worker, drain, close), the unit of work its ``Transactions``, and both,
like every delivery, read the bus only through the narrow ``Context`` it makes once. It
also chooses the relay's sink: this process's handlers, or a forwarder to its transport.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, overload

from . import hooks
from ._bus_lifecycle import Lifecycle
from ._causation import TOKEN, Frame, current_frame, envelope_of, full_frame
from ._codec import JSONCodec
from ._config import load_settings, transport_from_settings
from ._context import Context
from ._delivery import Attempts, ReplayResult, cut_short, deliver
from ._envelope import Envelope, check_headers, check_key
from ._events import EventRegistry, EventType, default_registry
from ._handlers import Delivery, Handler, HandlerTable, check_resource, inspect_handler
from ._records import FORWARD, PendingRow
from ._retry import RetryPolicy
from ._runtime import Runtime
from ._transactions import Transactions, current_scope
from .deadletters import MemoryDeadLetterStore
from .errors import (
    AsyncHandlerError,
    ConfigurationError,
    DeliveryUnavailableError,
    NotAnEventError,
    SkipEvent,
)
from .outbox._local import LocalHandlers
from .transports._forward import Forwarder
from .transports._link import TransportLink
from .transports._resolve import transport_from_url

if TYPE_CHECKING:
    import uuid
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    from ._events import EventInstance
    from .outbox._relay import Sink
    from .typing import Codec, DeadLetterStore, OutboxStore, Transport

__all__ = ["EventBus"]

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

_set_frame = current_frame.set
_reset_frame = current_frame.reset


class _Capture(Protocol):
    def _record(self, envelope: Envelope) -> None: ...


_PLAIN, _TRACKED, _GENERAL = 0, 1, 2
_Cached = tuple[tuple[Callable[..., Any], ...], int, "_Route"]


class _Route:
    """Everything the general path needs to publish one event class."""

    __slots__ = (
        "after_commit",
        "after_commit_names",
        "durable",
        "durable_names",
        "event_name",
        "has_async",
        "info",
        "inline",
        "needs_envelope",
        "observed",
    )

    def __init__(self, info: EventType, handlers: tuple[Handler, ...], *, observed: bool) -> None:
        self.info = info
        self.event_name = info.cls.__qualname__
        self.inline = tuple(h for h in handlers if h.delivery == "inline")
        self.after_commit = tuple(h for h in handlers if h.delivery == "after_commit")
        self.durable = tuple(h for h in handlers if h.delivery == "durable")
        self.after_commit_names = tuple(h.name for h in self.after_commit)
        self.durable_names = tuple(h.name for h in self.durable)
        self.has_async = any(h.is_async for h in self.inline)
        self.observed = observed
        self.needs_envelope = (
            observed
            or bool(self.after_commit or self.durable)
            or any(h.wants_envelope for h in self.inline)
        )

    def plain(self, *, is_async: bool) -> bool:
        """Whether a publish of this colour can skip the general path."""
        return not self.needs_envelope and all(
            h.is_async is is_async and h.retry is None for h in self.inline
        )


class EventBus:
    """A typed, in-process event bus.

    Subscribe handlers with ``@bus.subscribe``; publish with ``bus.publish(event)`` from
    sync code or ``await bus.apublish(event)`` from async code. Inline handlers run in the
    publisher's call stack, in dispatch order: handlers of the event's own class first,
    then those of its base classes along the MRO, each class's handlers in the order they
    were subscribed. An inline handler's exception reaches the publisher and stops the
    handlers after it, exactly like a function call.
    """

    __slots__ = (
        "__weakref__",
        "_aroutes",
        "_captures",
        "_context",
        "_general",
        "_handlers",
        "_life",
        "_link",
        "_linkers",
        "_lock",
        "_outbox",
        "_routes",
        "_runtime",
        "_sleep",
        "_transactions",
    )

    def __init__(
        self,
        *,
        registry: EventRegistry | None = None,
        codec: Codec | None = None,
        retry: RetryPolicy | None = None,
        dead_letters: DeadLetterStore | None = None,
        concurrency: int = 64,
        workers: int = 8,
        shutdown_timeout: float = 10.0,
        sleep: Callable[[float], object] | None = None,
        outbox: OutboxStore | None = None,
        relay: bool = True,
        transport_url: str | None = None,
        transport: Transport | None = None,
        group: str | None = None,
        max_deliveries: int | None = None,
        worker: bool | None = None,
    ) -> None:
        """Make a bus.

        ``retry`` is the default policy of after-commit and durable handlers (3 attempts
        with exponential backoff unless given); inline handlers retry only with their own
        ``retry=``. ``dead_letters`` keeps what handlers gave up on (in memory unless
        given: pass a ``SQLiteDeadLetterStore`` to keep them across restarts).
        ``concurrency`` bounds the deliveries running at once on the runtime, ``workers``
        the threads that run sync handlers there, and ``shutdown_timeout`` how long
        ``stop()``, ``close()`` and the end of the interpreter wait for them. ``sleep``
        replaces the wait between retries, durable ones included (tests).
        ``outbox`` enables durable delivery: rows written in the application's
        transaction (``bus.transaction(connection)``) and relayed by this process, or
        with ``relay=False`` by another (``eventbus relay``).

        ``transport_url`` (or ``EVENTBUS_TRANSPORT_URL``, or ``transport_url`` in
        ``[tool.eventbus]`` of pyproject.toml or in eventbus.toml) sends durable events
        through a broker: ``redis://``, ``amqp://``, ``nats://`` or ``memory://``; a
        ``transport`` instance does the same from code. Durable handlers then run in the
        workers of every process whose bus has them, one per consumer ``group``
        (``EVENTBUS_GROUP``); ``worker=False`` (``EVENTBUS_WORKER=false``) keeps this
        process from consuming.
        A message delivered more than ``max_deliveries`` times (10) is dead-lettered.
        """
        registry = default_registry if registry is None else registry
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}")
        self._sleep = sleep
        self._outbox = outbox
        self._runtime = Runtime(
            concurrency=concurrency,
            workers=workers,
            sleep=sleep,
            shutdown_timeout=shutdown_timeout,
            on_exit=_stop_at_exit(self),
        )
        self._link, consumes = _link(transport_url, transport, group, max_deliveries, worker)
        self._handlers = HandlerTable()
        self._transactions = Transactions(outbox)
        self._context = context = Context(
            runtime=self._runtime,
            registry=registry,
            codec=JSONCodec(registry) if codec is None else codec,
            handlers=self._handlers,
            dead_letters=MemoryDeadLetterStore() if dead_letters is None else dead_letters,
            retry=RetryPolicy() if retry is None else retry,
            transactions=self._transactions,
            sender=self,
        )
        self._life = Lifecycle(
            context,
            outbox=outbox,
            sink=_sink(context, outbox, self._link),
            relays=relay,
            link=self._link,
            worker=consumes,
            on_close=_weak_method(self._mark_closed),
        )
        self._routes: dict[type[Any], _Cached] = {}
        self._aroutes: dict[type[Any], _Cached] = {}
        self._general: dict[type[Any], _Route] = {}
        self._captures: tuple[_Capture, ...] = ()
        # Handlers that can see an envelope (non-inline ones, those that take it): while
        # there are any, every publish tracks its cause so their envelopes link up.
        self._linkers = 0
        # Reentrant: a hook receiver connected from inside a route build must not deadlock.
        self._lock = threading.RLock()
        hooks._watch(self)
        _buses.add(self)

    @property
    def transport(self) -> Transport | None:
        """The transport durable events travel through, or None (in this process only)."""
        return None if self._link is None else self._link.transport

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else "open"
        return f"<EventBus {state}, {len(self._handlers)} handlers>"

    @property
    def registry(self) -> EventRegistry:
        """The registry this bus resolves events in."""
        return self._context.registry

    @property
    def codec(self) -> Codec:
        """How envelopes are written to the wire, the outbox and the dead letters."""
        return self._context.codec

    @property
    def retry_policy(self) -> RetryPolicy:
        """The default retry policy of after-commit and durable handlers."""
        return self._context.retry

    @property
    def dead_letters(self) -> DeadLetterStore:
        """Where envelopes that handlers gave up on are kept."""
        return self._context.dead_letters

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called; a closed bus refuses publishes and subscriptions."""
        return self._life.closed

    # -- subscribing -----------------------------------------------------------------

    @overload
    def subscribe(  # a class is callable too: an explicit event type matches this first
        self,
        event_type: type[Any] | types.UnionType,
        /,
        *,
        name: str | None = None,
        delivery: Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]: ...

    @overload
    def subscribe(
        self,
        handler: F,
        /,
        *,
        name: str | None = None,
        delivery: Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> F: ...

    @overload
    def subscribe(
        self,
        *,
        name: str | None = None,
        delivery: Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]: ...

    def subscribe(  # type: ignore[misc] # mypy cannot pair overload 3, whose F is return-only
        self,
        target: Any = None,
        /,
        *,
        name: str | None = None,
        delivery: Delivery = "inline",
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Subscribe a handler; returns it unchanged.

        ``@bus.subscribe`` reads the event type from the first parameter's annotation
        (a union subscribes to each member). ``@bus.subscribe(EventType, name=...,
        delivery=..., retry=...)`` names the type explicitly. A handler that also takes a
        parameter annotated ``Envelope`` receives the event's envelope.

        ``delivery``: ``"inline"`` runs in ``publish``; ``"after_commit"`` runs on the
        bus's runtime after the surrounding transaction commits (at once outside one);
        ``"durable"`` goes through the transactional outbox. ``retry`` overrides the
        bus's policy; an inline handler retries only when given one.
        """
        if target is not None and not _is_type_spec(target):
            return self._add(target, None, name=name, delivery=delivery, retry=retry)

        def decorator(handler: F) -> F:
            return self._add(handler, target, name=name, delivery=delivery, retry=retry)

        return decorator

    def _add(
        self,
        fn: F,
        event_type: Any,
        *,
        name: str | None,
        delivery: str,
        retry: RetryPolicy | None,
    ) -> F:
        outbox = self._outbox
        resource_type = None if outbox is None else outbox.resource_type
        handler = inspect_handler(
            fn,
            event_type,
            name=name,
            delivery=delivery,
            retry=retry,
            resource_type=resource_type,
        )
        check_resource(handler, resource_type, outbox)
        with self._lock:
            self._check_open()
            self._handlers.add(handler)
            linked = _links_causes(handler)
            if linked:
                self._linkers += 1
            self._invalidate()
        if linked:
            _tracking_changed()
        return fn

    def unsubscribe(self, handler: Callable[..., Any] | str) -> None:
        """Remove a handler, given as its name or the function that was subscribed."""
        with self._lock:
            found = self._handlers.find(handler)
            self._handlers.remove(found)
            linked = _links_causes(found)
            if linked:
                self._linkers -= 1
            self._invalidate()
        if linked:
            _tracking_changed()

    def handlers_for(self, event_type: type[Any]) -> tuple[Handler, ...]:
        """The handlers a publish of ``event_type`` reaches, in dispatch order."""
        if not isinstance(event_type, type):
            raise TypeError(f"handlers_for() takes an event class, got {event_type!r}")
        with self._lock:
            return self._handlers.collect(event_type)

    @property
    def handlers(self) -> tuple[Handler, ...]:
        """Every subscribed handler, in subscription order."""
        return tuple(self._handlers)

    # -- routes ----------------------------------------------------------------------

    def _invalidate(self) -> None:
        with self._lock:
            self._routes = {}
            self._aroutes = {}
            self._general = {}

    def _hooks_changed(self) -> None:
        self._invalidate()

    def _route(self, event_class: type[Any]) -> _Route:
        self._check_open()
        info = self._context.registry.get(event_class)
        if info is None:
            raise NotAnEventError(self._not_an_event(event_class))
        from .hooks import _publish_observed  # noqa: PLC0415 - keeps hooks' import light

        route = self._general.get(event_class)
        if route is None:
            observed = bool(self._captures) or _publish_observed()
            route = _Route(info, self._handlers.collect(event_class), observed=observed)
            self._general[event_class] = route
        return route

    def _sync_route(self, event_class: type[Any]) -> _Cached:
        with self._lock:
            cached = self._cache(self._route(event_class), is_async=False)
            self._routes[event_class] = cached
            return cached

    def _async_route(self, event_class: type[Any]) -> _Cached:
        with self._lock:
            cached = self._cache(self._route(event_class), is_async=True)
            self._aroutes[event_class] = cached
            return cached

    def _cache(self, route: _Route, *, is_async: bool) -> _Cached:
        if not route.plain(is_async=is_async):
            return ((), _GENERAL, route)
        functions = tuple(h.fn for h in route.inline)
        return (functions, _TRACKED if _tracking() else _PLAIN, route)

    def _not_an_event(self, event_class: type[Any]) -> str:
        if event_class is type:
            return "publish() takes an event instance, got a class: publish EventClass(...)"
        registry = self._context.registry
        registered = [k for k in event_class.__mro__[1:] if registry.get(k) is not None]
        if registered:
            return (
                f"{event_class.__qualname__} is a subclass of the event "
                f"{registered[0].__qualname__} but is not declared itself; declare it "
                "with @eventbus.event('its.own_name') so it has a wire name"
            )
        return (
            f"publish() takes an event, got {event_class.__qualname__}: declare event "
            "classes with @eventbus.event('module.event_name')"
        )

    def _check_open(self) -> None:
        self._life.check_open()

    # -- publishing ------------------------------------------------------------------

    def _publish(
        self,
        event: object,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Positional-or-keyword parameters on purpose: keyword-only ones stop CPython
        # 3.11 from specialising the call, which costs a fifth of an untracked publish.
        # Type checkers see the keyword-only signature declared below.
        try:
            functions, mode, route = self._routes[event.__class__]
        except KeyError:
            functions, mode, route = self._sync_route(event.__class__)
        if key is None and headers is None:
            if not mode:  # _PLAIN
                for handler in functions:
                    try:  # noqa: SIM105 - a try is free in CPython 3.11; suppress() is not
                        handler(event)
                    except SkipEvent:
                        pass
                return
            if mode == _TRACKED:
                frame = [event, route, None]
                frame[2] = token = _set_frame(frame)
                try:
                    for handler in functions:
                        try:  # noqa: SIM105
                            handler(event)
                        except SkipEvent:
                            pass
                finally:
                    _reset_frame(token)
                return
        self._publish_general(route, event, key, headers)

    async def _apublish(
        self,
        event: object,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        try:
            functions, mode, route = self._aroutes[event.__class__]
        except KeyError:
            functions, mode, route = self._async_route(event.__class__)
        if key is None and headers is None:
            if not mode:  # _PLAIN
                for handler in functions:
                    try:  # noqa: SIM105
                        await handler(event)
                    except SkipEvent:
                        pass
                return
            if mode == _TRACKED:
                frame = [event, route, None]
                frame[2] = token = _set_frame(frame)
                try:
                    for handler in functions:
                        try:  # noqa: SIM105
                            await handler(event)
                        except SkipEvent:
                            pass
                finally:
                    _reset_frame(token)
                return
        await self._apublish_general(route, event, key, headers)

    if TYPE_CHECKING:

        def publish(
            self,
            event: EventInstance,
            /,
            *,
            key: str | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            """Publish ``event`` from sync code.

            Type checkers accept only event instances (``EventInstance``); the run-time
            check of the class (registered, declared itself) happens on its first publish.
            """

        async def apublish(
            self,
            event: EventInstance,
            /,
            *,
            key: str | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            """Publish ``event`` from async code; accepts what ``publish`` does."""

    else:
        publish = _publish
        apublish = _apublish

    def _publish_general(self, route: _Route, event: object, key: object, headers: object) -> None:
        frame = self._frame(route, event, key, headers, is_async=False)
        frame[TOKEN] = token = _set_frame(frame)
        try:
            rows = self._rows(route, frame)
            observed = route.observed
            if observed:
                self._announce(frame)
            for handler in route.inline:
                self._run_inline(handler, event, frame, observed=observed)
        finally:
            _reset_frame(token)
        if rows or route.after_commit:
            self._after_inline(route, frame, rows)

    async def _apublish_general(
        self, route: _Route, event: object, key: object, headers: object
    ) -> None:
        frame = self._frame(route, event, key, headers, is_async=True)
        frame[TOKEN] = token = _set_frame(frame)
        try:
            rows = self._rows(route, frame)
            observed = route.observed
            if observed:
                self._announce(frame)
            for handler in route.inline:
                await self._arun_inline(handler, event, frame, observed=observed)
        finally:
            _reset_frame(token)
        if rows or route.after_commit:
            self._after_inline(route, frame, rows)

    def _run_inline(self, handler: Handler, event: object, frame: Frame, *, observed: bool) -> None:
        """One inline handler: its failure reaches the caller, after its own retries
        (``handler.retry`` only: an inline handler without one fails at once)."""
        started, attempts = time.monotonic(), None
        while True:
            try:
                _call(handler, event, frame)
            except SkipEvent:
                break
            except Exception as error:
                if attempts is None:  # made on the first failure only: most calls never fail
                    attempts = Attempts(self, handler, handler.retry, started)
                delay = attempts.failed(error, envelope_of(frame) if observed else None)
                if delay is None:
                    raise
                (self._sleep or time.sleep)(delay)
                continue
            break
        if observed:
            self._handled(frame, handler)

    async def _arun_inline(
        self, handler: Handler, event: object, frame: Frame, *, observed: bool
    ) -> None:
        started, attempts = time.monotonic(), None
        while True:
            try:
                result = _call(handler, event, frame)
                if inspect.isawaitable(result):
                    await result
            except SkipEvent:
                break
            except Exception as error:
                if attempts is None:
                    attempts = Attempts(self, handler, handler.retry, started)
                delay = attempts.failed(error, envelope_of(frame) if observed else None)
                if delay is None:
                    raise
                if self._sleep is None:
                    await asyncio.sleep(delay)
                else:
                    self._sleep(delay)
                continue
            break
        if observed:
            self._handled(frame, handler)

    def _rows(self, route: _Route, frame: Frame) -> list[PendingRow]:
        """Encode a durable publish's rows before any handler runs: a bad or oversized
        event fails the publish (and so the business transaction), not the relay."""
        if not route.durable:
            return []
        envelope = envelope_of(frame)
        payload = self._context.codec.encode(envelope)
        if self._link is not None:
            # One row for the transport: the handlers may live in other processes, and
            # each worker's inbox and retries are per handler there.
            return [PendingRow(envelope.id, envelope.name, FORWARD, envelope.key, payload)]
        return [
            PendingRow(envelope.id, envelope.name, handler.name, envelope.key, payload)
            for handler in route.durable
        ]

    def _after_inline(self, route: _Route, frame: Frame, rows: list[PendingRow]) -> None:
        """Write durable rows and hand over after-commit work: in the scope, or now."""
        transactions = self._transactions
        # A transaction the outbox's framework opened (Django's atomic) comes first: it
        # is the unit of work, savepoints included, whatever scope is open around it.
        ambient = transactions.ambient() if transactions.joins_ambient else None
        scope = current_scope.get() if ambient is None else ambient
        if scope is not None and scope.owner is not transactions:
            scope = None  # another bus's transaction: this bus's outbox is not in it
        outbox = self._outbox
        if rows:
            assert outbox is not None
            if scope is not None:
                # Written in one batch just before COMMIT, in the same transaction: one
                # executemany costs less than a statement per publish.
                if not scope.rows:
                    scope.after_commit(self._life.nudge)
                scope.rows.extend(rows)
            else:
                outbox.write_now(rows)
                self._life.nudge()
        if route.after_commit:
            if scope is not None:
                scope.after_commit(functools.partial(self._defer, route, frame))
            else:
                self._defer(route, frame)
        if ambient is not None:
            transactions.settle(ambient)  # its rows written now, its callbacks handed over

    def _defer(self, route: _Route, frame: Frame) -> None:
        """Hand the after-commit handlers to the runtime, isolated from the publisher."""
        envelope = envelope_of(frame)
        context = self._context
        for handler in route.after_commit:
            self._runtime.submit(
                functools.partial(deliver, context, handler, envelope),
                handler.name,
                cancelled=functools.partial(cut_short, context, handler, envelope),
            )

    def _frame(
        self, route: _Route, event: object, key: object, headers: object, *, is_async: bool
    ) -> Frame:
        """Validate a general-path publish before any handler runs; return its frame."""
        checked_key = check_key(key)
        checked_headers = check_headers(headers)
        if route.has_async and not is_async:
            names = ", ".join(h.name for h in route.inline if h.is_async)
            raise AsyncHandlerError(
                f"{route.info.cls.__qualname__} has async inline handlers ({names}); "
                "sync publish() cannot run them: use 'await bus.apublish(event)', "
                "or make the handlers sync. No handler was run"
            )
        if route.durable and self._outbox is None:
            names = ", ".join(h.name for h in route.durable)
            raise DeliveryUnavailableError(
                f"{route.info.cls.__qualname__} has durable handlers ({names}), which need "
                "the transactional outbox; this bus has none: pass EventBus(outbox=...), "
                "e.g. SQLiteOutbox(path) or eventbus_contrib.sqlalchemy.SQLAlchemyOutbox. "
                "No handler was run"
            )
        if route.durable or route.after_commit:
            self._transactions.check_publish(route, is_async)
        return full_frame(event, route, checked_key, checked_headers)

    def _announce(self, frame: Frame) -> None:
        """Show a publish to the captures and the event_published receivers."""
        envelope = envelope_of(frame)
        for capture in self._captures:
            capture._record(envelope)
        hooks._send(hooks.event_published, self, envelope=envelope)

    def _handled(self, frame: Frame, handler: Handler) -> None:
        hooks._send(hooks.event_handled, self, envelope=envelope_of(frame), handler=handler.name)

    # -- captures (eventbus.testing) ---------------------------------------------------

    def _attach_capture(self, capture: _Capture) -> None:
        with self._lock:
            self._captures = (*self._captures, capture)
            self._invalidate()

    def _detach_capture(self, capture: _Capture) -> None:
        with self._lock:
            self._captures = tuple(c for c in self._captures if c is not capture)
            self._invalidate()

    @property
    def outbox(self) -> OutboxStore | None:
        """The outbox durable publishes write to, if this bus has one."""
        return self._outbox

    # -- transactions (``Transactions``) ------------------------------------------------

    def transaction(self, connection: R) -> AbstractContextManager[R]:
        """A transaction on ``connection`` that publishes belong to.

        Begins on entry (``BEGIN IMMEDIATE`` on sqlite3), commits on a clean exit, rolls
        back when the block raises. Durable publishes inside write their outbox rows in
        this transaction (in one batch, just before the commit); after-commit handlers
        wait for the commit; a rollback drops both. Nested on the same connection, it is
        a savepoint: rolling it back drops only what was published inside it.

        On a connection or session already in a transaction (begun by the application or
        a framework), it joins that transaction: the block is a savepoint in it, its rows
        are written at the end of the block, and whoever began the transaction commits
        or rolls back everything, after-commit handlers waiting for that commit.
        """
        return self._transactions.transaction(connection)

    def atransaction(self, resource: R) -> AbstractAsyncContextManager[R]:
        """``transaction()`` for an async resource (a SQLAlchemy ``AsyncSession``).

        The same unit of work, awaited: begins on entry, writes the durable rows and
        commits on a clean exit, rolls back when the block raises; after-commit handlers
        wait for the commit. Nested on the same resource, it is a savepoint. On a
        resource already in a transaction, it joins it, as ``transaction()`` does.
        Publish inside with ``bus.publish`` or ``await bus.apublish``: neither does I/O
        here.
        """
        return self._transactions.atransaction(resource)

    # -- the work beside the publisher (``Lifecycle``) ----------------------------------

    def start(self) -> None:
        """Start the runtime in a thread of its own (sync applications), with the relay
        and the worker.

        Optional: the first after-commit delivery starts it. ``stop()`` (or the end of
        the interpreter) finishes what is in flight, up to ``shutdown_timeout``; a later
        ``start()`` brings everything back.
        """
        self._life.start()

    async def astart(self) -> None:
        """Run the runtime, the relay and the worker on the current event loop (an ASGI
        lifespan's startup; ``async with bus`` does this too). Repeats after ``astop()``,
        on a new loop if need be (each ``TestClient(app)`` has its own)."""
        await self._life.astart()

    def stop(self) -> None:
        """Finish what is in flight (up to ``shutdown_timeout``), then stop the runtime,
        the relay and the worker. The bus stays open: ``start()``, or the next deferred
        delivery, brings them back. The end of the interpreter calls this.

        Outbox rows waiting for a later retry are not waited for: they stay in the
        outbox, for the next start (or another process). What is still running when the
        time is up is logged by name and cancelled; an after-commit delivery cut short
        (or still queued) is kept as a dead letter (``DeliveryCancelledError``).
        """
        self._life.stop()

    async def astop(self) -> None:
        """``stop()`` from async code: an ASGI lifespan's shutdown. ``astart()`` may
        follow, on this loop or a new one."""
        await self._life.astop()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled (tests).

        After-commit deliveries and their retries, every outbox row that is due, and the
        rows this process's relay put back for a later attempt: their retries too. With
        ``EventBus(sleep=...)`` those waits are the injected sleep, so drain returns as
        soon as the work is done. ``TimeoutError`` says what is still unfinished.
        """
        self._life.drain(timeout)

    async def adrain(self, timeout: float | None = None) -> None:
        """Wait until everything published so far is handled, from async code."""
        await self._life.adrain(timeout)

    def replay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """Run a dead letter's handler again; on success the letter is gone.

        On failure the letter stays, with the new error and more attempts. Two replays
        of one letter at once run its handler once: the second raises
        ``ReplayInProgressError``. ``lease`` bounds how long a replay may hold the
        letter before another may take it over (its replayer died).
        """
        return self._life.replay(letter_id, lease=lease)

    async def areplay(self, letter_id: uuid.UUID | str, *, lease: float = 300.0) -> ReplayResult:
        """Run a dead letter's handler again, from async code."""
        return await self._life.areplay(letter_id, lease=lease)

    def close(self) -> None:
        """Finish in-flight deliveries (up to ``shutdown_timeout``), stop, and refuse more:
        final. Later publishes, subscriptions and starts raise ``BusClosedError``.

        Use ``stop()`` where the bus may start again (an ASGI lifespan: ``astop()``).
        """
        self._life.close()

    async def aclose(self) -> None:
        """Close the bus from async code (``async with bus`` does this at the end)."""
        await self._life.aclose()

    def _mark_closed(self) -> None:
        """The lifecycle closed the bus for good: publishes and subscriptions stop."""
        with self._lock:
            linked, self._linkers = self._linkers, 0
            self._invalidate()
        if linked:
            _tracking_changed()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


for _function, _name in ((EventBus._publish, "publish"), (EventBus._apublish, "apublish")):
    _function.__name__ = _name
    _function.__qualname__ = f"EventBus.{_name}"
del _function, _name


def _stop_at_exit(bus: EventBus) -> Callable[[], None]:
    """What the end of the interpreter runs for ``bus``: its ``stop()``, which finishes
    what is in flight (its relay's rows included). A weak reference: a started runtime
    does not keep an otherwise forgotten bus alive."""
    reference = weakref.ref(bus)

    def stop() -> None:
        alive = reference()
        if alive is not None:
            alive.stop()

    return stop


def _weak_method(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` of the bus, not keeping the bus alive (see ``_stop_at_exit``)."""
    reference = weakref.WeakMethod(method)

    def call() -> None:
        alive = reference()
        if alive is not None:
            alive()

    return call


def _call(handler: Handler, event: object, frame: Frame) -> Any:
    if handler.wants_envelope:
        return handler.fn(event, envelope_of(frame))
    return handler.fn(event)


# Causation links through one contextvar whichever bus publishes, so a bus whose handler
# publishes on another bus must track too: tracking is decided across every live bus.
_buses: weakref.WeakSet[EventBus] = weakref.WeakSet()


def _tracking() -> bool:
    """Whether any live bus has a handler that can see an envelope."""
    return any(bus._linkers for bus in list(_buses))


def _tracking_changed() -> None:
    """Rebuild every bus's routes (called outside any bus lock, so none can deadlock)."""
    for bus in list(_buses):
        bus._invalidate()


def _is_type_spec(target: object) -> bool:
    """Whether subscribe() was given event types (a class or a union), not a handler."""
    return isinstance(target, (type, types.UnionType)) or typing.get_origin(target) is typing.Union


def _links_causes(handler: Handler) -> bool:
    return handler.delivery != "inline" or handler.wants_envelope


def _link(
    transport_url: str | None,
    transport: Transport | None,
    group: str | None,
    max_deliveries: int | None,
    worker: bool | None,
) -> tuple[TransportLink | None, bool]:
    """The bus's transport, from its arguments or its settings, and whether this process
    consumes it (its worker)."""
    arguments = {
        "transport_url": transport_url,
        "group": group,
        "max_deliveries": max_deliveries,
        "worker": worker,
    }
    if transport is not None and transport_url is not None:
        raise ConfigurationError("give transport_url or transport, not both")
    settings = load_settings(arguments)
    remake = None
    if transport is None:
        transport = transport_from_settings(settings)  # a refusal names the URL's source
        url = settings.transport_url
        if transport is not None and url is not None:
            # A stopped bus starts again with a new transport made from the same URL.
            remake = functools.partial(transport_from_url, url)
    if transport is None:
        return None, settings.worker
    link = TransportLink(
        transport,
        group=settings.group,
        max_deliveries=settings.max_deliveries,
        remake=remake,
    )
    return link, settings.worker


def _sink(context: Context, outbox: OutboxStore | None, link: TransportLink | None) -> Sink | None:
    """Where the relay sends the outbox's rows: this process's durable handlers, or, with
    a transport, a forwarder to it (which leaves rows for a handler to those handlers)."""
    if outbox is None:
        return None
    local = LocalHandlers(context, outbox)
    return local if link is None else Forwarder(link, context, local)
