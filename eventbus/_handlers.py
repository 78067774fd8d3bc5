"""Handler introspection: which events a function takes, how it is called, its name."""

from __future__ import annotations

import functools
import inspect
import re
import sqlite3
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin

import attrs

from ._envelope import Envelope
from ._retry import RetryPolicy
from .errors import ConfigurationError, HandlerSignatureError

__all__ = ["Delivery", "Handler", "inspect_handler"]

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
) -> Handler:
    """Build a ``Handler`` from a function, validating everything a publish relies on."""
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
    wants_envelope, connection_type = _extras(params, hints, label)
    wants_connection = connection_type is not None
    if wants_connection and is_async:
        raise HandlerSignatureError(
            f"{label} is async and takes a connection; a connection-taking durable handler "
            "runs in a database transaction on a worker thread, so it must be a plain def"
        )
    if wants_connection and delivery != "durable":
        raise HandlerSignatureError(
            f"{label} takes a connection, which only durable handlers get (its "
            "transaction also records that the handler ran): subscribe it with "
            "delivery='durable'"
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
    params: list[inspect.Parameter], hints: dict[str, Any], label: str
) -> tuple[bool, type[Any] | None]:
    """What the handler takes after the event: (an envelope?, a connection type or None)."""
    wants_envelope = False
    connection_type: type[Any] | None = None
    for param in params[1:]:
        annotation = hints.get(param.name)
        takes_envelope = annotation is Envelope and not wants_envelope and connection_type is None
        takes_connection = _is_connection(annotation) and connection_type is None
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


# What a durable handler may take to write in the transaction that records it ran:
# sqlite3 connections here; integrations add theirs (SQLAlchemy's Session).
_RESOURCE_TYPES: list[type[Any]] = [sqlite3.Connection]


def register_resource_type(resource_type: type[Any]) -> None:
    """Let durable handlers take ``resource_type`` (called by outbox integrations)."""
    if resource_type not in _RESOURCE_TYPES:
        _RESOURCE_TYPES.append(resource_type)


def _is_connection(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, tuple(_RESOURCE_TYPES))


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
