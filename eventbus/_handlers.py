"""Handlers: which events a function takes, how it is called, its name; and the table of
a bus's handlers, by name and by event class, which the machinery below the bus reads."""

from __future__ import annotations

import functools
import inspect
import re
import sqlite3
import threading
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

import attrs

from ._envelope import Envelope
from ._retry import RetryPolicy
from .errors import ConfigurationError, DuplicateHandlerError, HandlerSignatureError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._events import EventRegistry

__all__ = ["Delivery", "Handler", "HandlerTable", "inspect_handler"]

Delivery = Literal["inline", "after_commit", "durable"]
DELIVERIES: tuple[Delivery, ...] = ("inline", "after_commit", "durable")

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
# Printable, and no space at either end (some databases compare names ignoring trailing
# spaces, which would let two handlers share an inbox).
_NAME = re.compile(r"(?=\S)[^\x00-\x1f\x7f]{1,200}(?<=\S)")


@attrs.frozen(slots=True, eq=False)
class Handler:
    """A subscribed handler, as the bus sees it.

    ``name`` is unique per bus and stable across deploys: inboxes and dead letters key on
    it, so rename a function freely but keep its name (pass ``name=`` when you move it).
    """

    name: str
    fn: Callable[..., Any] = attrs.field(repr=False)
    event_types: tuple[type[Any], ...]
    delivery: Delivery
    is_async: bool
    wants_envelope: bool = attrs.field(repr=False)
    """Whether the handler declared a second parameter annotated ``Envelope``."""
    connection_type: type[Any] | None = attrs.field(default=None, repr=False)
    """The connection (or session) type a durable handler takes, if it takes one."""

    @property
    def wants_connection(self) -> bool:
        """Whether a durable handler takes a connection (its own transaction)."""
        return self.connection_type is not None

    retry: RetryPolicy | None = attrs.field(default=None, repr=False)
    """Its own retry policy, if it has one (else the bus's, for non-inline handlers)."""


def inspect_handler(
    fn: Callable[..., Any],
    event_type: type[Any] | None,
    *,
    name: str | None,
    delivery: str,
    retry: RetryPolicy | None = None,
    resource_type: type[Any] | None = None,
) -> Handler:
    """Build a ``Handler`` from a function, validating everything a publish relies on.

    ``resource_type``: what the bus's outbox gives connection-taking handlers, if it has
    one (the bus then checks that such a handler takes that, ``check_resource``).
    """
    if not callable(fn) or isinstance(fn, type):
        raise HandlerSignatureError(
            f"a handler must be a function, a method or a callable object, got {fn!r}"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}")
    if delivery not in DELIVERIES:
        raise ConfigurationError(
            f"delivery must be one of {', '.join(map(repr, DELIVERIES))}, got {delivery!r}"
        )
    label = _describe(fn)
    target = _call_target(fn)
    if inspect.isasyncgenfunction(target) or inspect.isgeneratorfunction(target):
        raise HandlerSignatureError(
            f"{label} is a generator function: its body would never run when called. "
            "Handlers are plain functions or coroutines (async def without yield)"
        )
    # A decorator that wraps a coroutine function in a plain def (keeping __wrapped__)
    # still returns a coroutine: it is an async handler, and sync publish must refuse it.
    is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        inspect.unwrap(target)
    )
    params = _parameters(fn, label)
    hints = _hints(fn, label, required=event_type is None)
    annotated = hints.get(params[0].name) if params else None
    if event_type is None:
        if not params:
            raise HandlerSignatureError(
                f"{label} takes no parameters; a handler takes the event as its first "
                "parameter, annotated with the event class"
            )
        if annotated is None:
            raise HandlerSignatureError(
                f"{label} has no annotation on its first parameter {params[0].name!r}: "
                "annotate it with the event class (def handler(event: OrderPlaced)), "
                "or pass the type explicitly: @bus.subscribe(OrderPlaced)"
            )
        event_types = _event_types(annotated, label)
    else:
        event_types = _event_types(event_type, label)
        if not params:
            raise HandlerSignatureError(f"{label} takes no parameters; it must take the event")
        _check_compatible(event_types, annotated, label)
    wants_envelope, connection_type = _extras(params, hints, label, resource_type)
    wants_connection = connection_type is not None
    if wants_connection and is_async:
        raise HandlerSignatureError(
            f"{label} is async and takes a connection; a connection-taking durable handler "
            "runs in a database transaction on a worker thread, so it must be a plain def"
        )
    if connection_type is not None and delivery != "durable":
        raise HandlerSignatureError(
            f"{label} takes a {connection_type.__qualname__} after the event, which only "
            "a durable handler may: a connection (or session) of the outbox's database, "
            "whose transaction also records that the handler ran. Subscribe it with "
            "delivery='durable', or give the parameter a default"
        )
    return Handler(
        name=_handler_name(fn, name, label),
        fn=fn,
        event_types=event_types,
        delivery=delivery,
        is_async=is_async,
        wants_envelope=wants_envelope,
        connection_type=connection_type,
        retry=retry,
    )


def _describe(fn: Callable[..., Any]) -> str:
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"handler {qualname}"


def _call_target(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function whose code runs: the function itself, or a callable object's __call__."""
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn):
        return fn
    # A callable object: its class's __call__, bound to it, is what runs.
    if inspect.isfunction(inspect.getattr_static(type(fn), "__call__", None)):
        return typing.cast("Callable[..., Any]", fn.__call__)  # type: ignore[operator]
    return fn


def _parameters(fn: Callable[..., Any], label: str) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise HandlerSignatureError(f"cannot read the signature of {label}: {exc}") from exc
    params = list(signature.parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if params and params[0].kind not in positional:
        raise HandlerSignatureError(
            f"{label}: the event must be the first positional parameter, "
            f"but {params[0].name!r} is {params[0].kind.description}"
        )
    return params


def _hints(fn: Callable[..., Any], label: str, *, required: bool) -> dict[str, Any]:
    """Parameter annotations, strings evaluated; through partials and callable objects too."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except NameError as exc:
        if not required:
            return {}
        module = getattr(inspect.unwrap(_call_target(fn)), "__module__", "its module")
        raise HandlerSignatureError(
            f"{label}: cannot resolve the annotation {exc.name!r} ({exc}). Import the event "
            f"class at module level of {module} (not only under TYPE_CHECKING), "
            "or pass it explicitly: @bus.subscribe(EventClass)"
        ) from exc
    except (TypeError, ValueError):
        return {}  # builtins and some callables carry no readable signature
    empty = inspect.Parameter.empty
    parameters = signature.parameters.values()
    return {p.name: p.annotation for p in parameters if p.annotation is not empty}


def _event_types(annotation: Any, label: str) -> tuple[type[Any], ...]:
    origin = get_origin(annotation)
    members = get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    result: list[type[Any]] = []
    for member in members:
        if member is type(None):
            raise HandlerSignatureError(
                f"{label}: None is not an event; drop Optional/None from the annotation"
            )
        if not isinstance(member, type) or get_origin(member) is not None:
            raise HandlerSignatureError(
                f"{label}: {member!r} is not an event class; annotate the first parameter "
                "with an event class or a union of them (OrderPlaced | OrderCancelled)"
            )
        if member.__module__ == "builtins" and member is not object:
            raise HandlerSignatureError(
                f"{label}: {member.__qualname__} is a builtin type, not an event class"
            )
        if member not in result:
            result.append(member)
    return tuple(result)


def _check_compatible(event_types: tuple[type[Any], ...], annotated: Any, label: str) -> None:
    """An explicit type must be something the annotated parameter can accept."""
    if annotated is None or annotated is Any:
        return
    try:
        accepted = _event_types(annotated, label)
    except HandlerSignatureError:
        return  # an annotation we cannot read as classes; the explicit type decides
    for event_type in event_types:
        if not any(issubclass(event_type, ok) for ok in accepted):
            raise HandlerSignatureError(
                f"{label} is subscribed to {event_type.__qualname__} but its first parameter "
                f"is annotated {_type_label(annotated)}: make them agree"
            )


def _type_label(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)


def _extras(
    params: list[inspect.Parameter],
    hints: dict[str, Any],
    label: str,
    resource_type: type[Any] | None,
) -> tuple[bool, type[Any] | None]:
    """What the handler takes after the event: (an envelope?, a connection type or None)."""
    wants_envelope = False
    connection_type: type[Any] | None = None
    for param in params[1:]:
        annotation = hints.get(param.name)
        takes_envelope = annotation is Envelope and not wants_envelope and connection_type is None
        takes_connection = connection_type is None and _is_connection(
            param, annotation, resource_type
        )
        if takes_envelope or takes_connection:
            if param.kind not in _POSITIONAL:
                raise HandlerSignatureError(
                    f"{label}: the parameter {param.name!r} must be positional"
                )
            if takes_envelope:
                wants_envelope = True
            else:
                connection_type = annotation
            continue
        if param.default is inspect.Parameter.empty and param.kind not in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            raise HandlerSignatureError(
                f"{label}: parameter {param.name!r} has no default and is neither an "
                "Envelope nor a connection; a handler takes (event), then optionally "
                "(envelope: Envelope), then optionally a connection or session of the "
                "outbox's database (sqlite3.Connection, sqlalchemy.orm.Session) when durable"
            )
    return wants_envelope, connection_type


def _is_connection(
    param: inspect.Parameter, annotation: object, resource_type: type[Any] | None
) -> bool:
    """Whether ``param`` is where a durable handler takes a connection (or session).

    What the bus's outbox gives (and stdlib sqlite3 connections, the core's own kind) is
    one, with a default or not. A required parameter annotated with any other class that
    is not a builtin is taken for one too, so that the bus can say what its outbox gives
    instead (``check_resource``) rather than call it an unknown parameter.
    """
    if not isinstance(annotation, type) or get_origin(annotation) is not None:
        return False
    if annotation is Envelope:
        return False
    known = (sqlite3.Connection,) if resource_type is None else (sqlite3.Connection, resource_type)
    if issubclass(annotation, known):
        return True
    return param.default is inspect.Parameter.empty and annotation.__module__ != "builtins"


def check_resource(handler: Handler, resource_type: type[Any] | None, outbox: object) -> None:
    """A connection-taking handler must take what its bus's outbox (``outbox``, which
    gives ``resource_type``) yields; a bus without an outbox refuses it at publish."""
    wanted = handler.connection_type
    if wanted is None or resource_type is None or issubclass(resource_type, wanted):
        return
    raise HandlerSignatureError(
        f"handler {handler.name} takes a {wanted.__qualname__}, but this bus's outbox "
        f"({outbox!r}) gives durable handlers a {resource_type.__qualname__}: "
        "annotate that type instead"
    )


def _handler_name(fn: Callable[..., Any], name: str | None, label: str) -> str:
    if name is not None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"{label}: name must be a non-empty str of at most 200 printable "
                f"characters, without spaces at either end, got {name!r}"
            )
        if name.startswith("@"):
            raise ConfigurationError(
                f"{label}: names starting with '@' are eventbus's own (outbox destinations "
                f"and dead letters of the relay and the worker), got {name!r}"
            )
        return name
    if isinstance(fn, functools.partial):
        raise ConfigurationError(f"{label} is a functools.partial: pass name='...'")
    owner = fn if hasattr(fn, "__qualname__") else type(fn)
    module = getattr(owner, "__module__", None)
    qualname = getattr(owner, "__qualname__", None)
    if not module or not qualname:
        raise ConfigurationError(f"{label} has no qualified name: pass name='...'")
    return f"{module}.{qualname}"


class HandlerTable:
    """The handlers subscribed to one bus, by name and by event class.

    The bus changes it (under its lock); the relay, the worker and replays read it from
    any thread: a name looked up, or the durable handlers of an event class (cached per
    class until the table changes).
    """

    __slots__ = ("_by_name", "_by_type", "_durable", "_lock")

    def __init__(self) -> None:
        self._by_name: dict[str, Handler] = {}
        self._by_type: dict[type[Any], list[Handler]] = {}
        self._durable: dict[type[Any], tuple[Handler, ...]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Handler]:
        """Every handler, in subscription order."""
        return iter(tuple(self._by_name.values()))

    def get(self, name: str) -> Handler | None:
        """The handler named ``name``, if one is subscribed."""
        return self._by_name.get(name)

    def add(self, handler: Handler) -> None:
        with self._lock:
            existing = self._by_name.get(handler.name)
            if existing is not None:
                raise DuplicateHandlerError(
                    f"a handler named {handler.name!r} is already subscribed to this bus "
                    f"(for {_names(existing.event_types)}); give this one another name with "
                    "name='...'. Names key the inbox and the dead letters, so they must be "
                    "unique and stable"
                )
            self._by_name[handler.name] = handler
            for event_type in handler.event_types:
                self._by_type.setdefault(event_type, []).append(handler)
            self._durable = {}

    def remove(self, handler: Handler) -> None:
        with self._lock:
            del self._by_name[handler.name]
            for event_type in handler.event_types:
                handlers = self._by_type[event_type]
                handlers.remove(handler)
                if not handlers:
                    del self._by_type[event_type]
            self._durable = {}

    def find(self, handler: Callable[..., Any] | str) -> Handler:
        """The handler subscribed as ``handler`` (its name, or the function itself)."""
        if isinstance(handler, str):
            found = self._by_name.get(handler)
        else:
            matches = [h for h in self._by_name.values() if h.fn == handler]
            if len(matches) > 1:
                raise ConfigurationError(
                    f"{handler!r} is subscribed under several names "
                    f"({', '.join(h.name for h in matches)}); unsubscribe it by name"
                )
            found = matches[0] if matches else None
        if found is None:
            raise ConfigurationError(f"no handler {handler!r} is subscribed to this bus")
        return found

    def collect(self, event_type: type[Any]) -> tuple[Handler, ...]:
        """The handlers a publish of ``event_type`` reaches, in dispatch order: those of
        the class first, then of its bases along the MRO, each in subscription order."""
        with self._lock:
            return self._collect(event_type)

    def durable_for(self, event_type: type[Any]) -> tuple[Handler, ...]:
        """The durable handlers of ``event_type``, in dispatch order."""
        durable = self._durable.get(event_type)
        if durable is None:
            with self._lock:
                durable = tuple(h for h in self._collect(event_type) if h.delivery == "durable")
                self._durable[event_type] = durable
        return durable

    def _collect(self, event_type: type[Any]) -> tuple[Handler, ...]:
        ordered: dict[str, Handler] = {}
        for klass in event_type.__mro__:
            for handler in self._by_type.get(klass, ()):
                ordered.setdefault(handler.name, handler)
        return tuple(ordered.values())

    def durable_topics(self, registry: EventRegistry) -> list[str]:
        """Every registered event name whose class one of the durable handlers takes."""
        wanted = [h for h in self if h.delivery == "durable"]
        return sorted(
            {
                info.name
                for info in registry
                if any(issubclass(info.cls, t) for h in wanted for t in h.event_types)
            }
        )


def _names(event_types: tuple[type[Any], ...]) -> str:
    return " | ".join(t.__qualname__ for t in event_types)
