"""Declaring events: the ``@event`` decorator, wire names, versions, the registry, upcasters.

The registry is the allow-list for everything that is deserialised: a name that is not
in it is never turned into a class, and no class is ever imported because a message
named it.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol, TypeAlias, TypeVar, cast, dataclass_transform

import attr
import attrs

from .errors import ConfigurationError, DuplicateEventError, UnknownEventError

__all__ = [
    "EventInstance",
    "EventRegistry",
    "EventType",
    "default_registry",
    "event",
    "upcaster",
]

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# Dot-separated segments of letters, digits, '_' and '-': valid unchanged as a RabbitMQ
# routing key, a Redis stream name suffix and a NATS subject (where '*', '>' and spaces
# are wildcards or separators).
_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MAX_NAME_LENGTH = 200


class _AttrsEvent(Protocol):
    """An instance of an attrs class: what ``@event`` makes at run time, and what mypy's
    attrs plugin sees on a class declared with ``@attrs.frozen``."""

    __attrs_attrs__: ClassVar[Any]


class _DataclassEvent(Protocol):
    """An instance of a dataclass, or of a class made by a ``dataclass_transform``
    decorator such as ``@event``: type checkers (mypy and pyright) give those classes
    ``__dataclass_fields__``, so a class declared with ``@event`` satisfies this one."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


EventInstance: TypeAlias = _AttrsEvent | _DataclassEvent
"""What ``publish`` accepts, for type checkers: an instance of a class declared with
``@event``, or of a frozen attrs class or dataclass registered as it is. ``object()``, a
dict, or an event *class* are refused by the type check; which classes are registered
and frozen is only known at run time, where ``publish`` checks it."""


@attrs.frozen(slots=True)
class EventType:
    """What the registry knows of one event class: its wire name and schema version."""

    cls: type[Any]
    name: str
    version: int


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > _MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"event name {name!r} is not a valid wire name: use dot-separated words of "
            f"letters, digits, '_' and '-', at most {_MAX_NAME_LENGTH} characters, "
            "for example 'shop.order_placed'"
        )
    return name


def _check_version(version: object, what: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigurationError(f"event {what} must be an int >= 1, got {version!r}")
    return version


def _is_frozen(cls: type[Any]) -> bool:
    """Whether instances of an attrs class or dataclass refuse attribute assignment."""
    if dataclasses.is_dataclass(cls):
        return bool(cls.__dataclass_params__.frozen)  # type: ignore[attr-defined]
    # attrs has no public "is frozen" flag on every supported version, so ask the class
    # itself: a frozen attrs class raises FrozenInstanceError on any assignment.
    try:
        probe = object.__new__(cls)
    except TypeError:  # pragma: no cover - a custom __new__; judge by the setattr hook
        return cast("object", cls.__setattr__) is not object.__setattr__
    fields = attrs.fields(cls)
    try:
        setattr(probe, fields[0].name if fields else "__eventbus_probe__", None)
    except attrs.exceptions.FrozenInstanceError:
        return True
    except Exception:  # validators, converters, slots: anything but frozen means mutable
        return False
    return False


class EventRegistry:
    """Maps event classes to (name, version) and back, and holds the upcasters.

    Thread-safe for registration; lookups are plain dict reads.
    """

    def __init__(self) -> None:
        self._by_class: dict[type[Any], EventType] = {}
        self._by_name: dict[str, EventType] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._lock = threading.Lock()

    def register(self, cls: type[T], name: str, *, version: int = 1) -> type[T]:
        """Register an already frozen attrs class or dataclass under ``name``."""
        name = _check_name(name)
        version = _check_version(version)
        if not isinstance(cls, type):
            raise ConfigurationError(
                f"@event({name!r}) decorates classes, got {cls!r}: put it on a class statement"
            )
        if not _declared_here(cls):
            raise ConfigurationError(
                f"{cls.__qualname__} is not an attrs class or a dataclass: "
                f"declare it with @eventbus.event({name!r}) on a plain class"
            )
        if not _is_frozen(cls):
            raise ConfigurationError(
                f"event class {cls.__qualname__} is mutable, but events are immutable facts: "
                "declare it frozen (@attrs.frozen, @dataclass(frozen=True)), "
                "or use @eventbus.event on a plain class, which makes it frozen"
            )
        info = EventType(cls=cls, name=name, version=version)
        with self._lock:
            known = self._by_class.get(cls)
            if known is not None:
                raise DuplicateEventError(
                    f"{cls.__qualname__} is already registered as {known.name!r} "
                    f"(version {known.version}); declare each event class once"
                )
            other = self._by_name.get(name)
            if other is not None and not _same_declaration(other.cls, cls):
                raise DuplicateEventError(
                    f"event name {name!r} is taken by {_qualified(other.cls)}; "
                    f"{_qualified(cls)} needs a name of its own"
                )
            if other is not None:
                # The same module-level declaration executed again (importlib.reload,
                # a re-imported test module): the new class replaces the old one.
                del self._by_class[other.cls]
            self._by_class[cls] = info
            self._by_name[name] = info
        return cls

    def upcaster(self, name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register a function that lifts a ``from_version`` payload to ``from_version + 1``.

        The function takes and returns the payload as a plain JSON dict. Chains are
        applied step by step, so an old message always decodes to today's class.
        """
        name = _check_name(name)
        from_version = _check_version(from_version, "from_version")

        def register(function: Upcaster) -> Upcaster:
            if not callable(function):
                raise ConfigurationError(f"an upcaster must be callable, got {function!r}")
            with self._lock:
                if (name, from_version) in self._upcasters:
                    raise ConfigurationError(
                        f"an upcaster for {name!r} from version {from_version} is already "
                        "registered; each step has exactly one"
                    )
                self._upcasters[(name, from_version)] = function
            return function

        return register

    def info(self, cls: type[Any]) -> EventType:
        """The registration of ``cls``; ``UnknownEventError`` when it has none."""
        try:
            return self._by_class[cls]
        except (KeyError, TypeError):
            raise UnknownEventError(
                f"{getattr(cls, '__qualname__', cls)!r} is not a registered event: "
                "declare it with @eventbus.event('your.event_name')"
            ) from None

    def get(self, cls: type[Any]) -> EventType | None:
        """The registration of ``cls``, or None."""
        try:
            return self._by_class.get(cls)
        except TypeError:  # unhashable: certainly not a registered class
            return None

    def by_name(self, name: str) -> EventType:
        """The registration for a wire name; ``UnknownEventError`` when it has none."""
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise UnknownEventError(
                f"no event is registered under the name {name!r}: import the module that "
                "declares it before decoding (names are the allow-list for decoding)"
            ) from None

    def upcast(self, name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Lift a payload of ``version`` to the registered version of ``name``."""
        info = self.by_name(name)
        if version > info.version:
            raise UnknownEventError(
                f"{name!r} version {version} is newer than this process knows "
                f"(version {info.version}): deploy consumers before producers"
            )
        while version < info.version:
            step = self._upcasters.get((name, version))
            if step is None:
                raise UnknownEventError(
                    f"no upcaster lifts {name!r} from version {version} to {version + 1}: "
                    f"register one with @upcaster({name!r}, from_version={version})"
                )
            data = step(data)
            if not isinstance(data, dict):
                raise ConfigurationError(
                    f"the upcaster for {name!r} from version {version} returned "
                    f"{type(data).__name__}, not a dict"
                )
            version += 1
        return data

    def __iter__(self) -> Iterator[EventType]:
        return iter(sorted(self._by_name.values(), key=lambda info: info.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, cls: object) -> bool:
        return self.get(cls) is not None  # type: ignore[arg-type]

    def names(self) -> Mapping[str, EventType]:
        """A read-only view of name to registration."""
        return dict(self._by_name)


def _declared_here(cls: type[Any]) -> bool:
    """Whether ``cls`` itself (not only a base) was made an attrs class or a dataclass.

    A plain subclass of an event inherits ``__attrs_attrs__`` but its own annotations are
    not fields until it is decorated too.
    """
    return "__attrs_attrs__" in cls.__dict__ or "__dataclass_fields__" in cls.__dict__


def _qualified(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _same_declaration(old: type[Any], new: type[Any]) -> bool:
    return _qualified(old) == _qualified(new) and old is not new


default_registry = EventRegistry()
"""The registry that ``@event`` and ``EventBus()`` use unless given another."""


@dataclass_transform(
    frozen_default=True,
    kw_only_default=True,
    field_specifiers=(attrs.field, attr.attrib, attr.ib),
)
def event(
    name: str, /, *, version: int = 1, registry: EventRegistry | None = None
) -> Callable[[type[T]], type[T]]:
    """Declare an event: a frozen, slotted, keyword-only attrs class with a wire name.

    ``name`` is stable on the wire (outbox rows, broker messages, dead letters): rename the
    class freely, never the name. Bump ``version`` when the payload changes shape, and
    register an ``upcaster`` from the old version. A class that is already a frozen attrs
    class or a frozen dataclass is registered as it is.
    """
    _check_name(name)
    _check_version(version)
    target = default_registry if registry is None else registry

    def declare(cls: type[T]) -> type[T]:
        if not isinstance(cls, type):
            raise ConfigurationError(
                f"@event({name!r}) decorates classes, got {cls!r}: put it on a class statement"
            )
        if not _declared_here(cls):
            cls = attrs.frozen(cls, slots=True, kw_only=True)
        return target.register(cls, name, version=version)

    return declare


def upcaster(name: str, /, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register, on the default registry, an upcaster from ``from_version`` of ``name``."""
    return default_registry.upcaster(name, from_version=from_version)
