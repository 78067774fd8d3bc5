"""The envelope: an event plus the metadata that travels with it, and UUIDv7 ids."""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs

from ._redact import bounded
from .errors import ConfigurationError

__all__ = ["Envelope", "uuid7"]

EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})
_MAX_KEY_LENGTH = 1024
_MAX_HEADERS = 64
_MAX_HEADER_LENGTH = 4096

# Not a CSPRNG on purpose: ids need uniqueness, not secrecy, and os.urandom costs a
# system call per id. The random module reseeds itself in a forked child.
_random_bits = random.getrandbits
_time_ns = time.time_ns
_uuid_lock = threading.Lock()
_acquire = _uuid_lock.acquire
_release = _uuid_lock.release
_last_uuid = 0
_new_uuid = object.__new__
_UUID = uuid.UUID
# The slots of uuid.UUID, set through their descriptors: UUID.__setattr__ refuses, and
# the descriptor skips the attribute lookup object.__setattr__ would make.
_set_uuid_int = _UUID.__dict__["int"].__set__
_set_uuid_safe = _UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown

_B62 = (1 << 62) - 1
_RAND_A = 0xFFF << 64
# Version 7 in bits 76-79 and variant 0b10 in bits 62-63; 74 random bits elsewhere below
# bit 76: 76 random bits are drawn and the two variant bits cleared.
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_MASK = ((1 << 76) - 1) & ~(0b11 << 62)


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.

    Ids from one process are strictly increasing even within a millisecond (the random
    part is incremented instead, as RFC 9562 section 6.2 method 2 allows), so sorting by
    id sorts by creation time.
    """
    global _last_uuid  # noqa: PLW0603 - one process-wide monotonic sequence
    value = ((_time_ns() // 1_000_000) << 80) | _VERSION_VARIANT | (_random_bits(76) & _RANDOM_MASK)
    # acquire/try/finally costs less than a with statement on this hot path.
    _acquire()
    try:
        if value <= _last_uuid:
            # Same millisecond (or the clock stepped back): continue the sequence.
            value = _next_after(_last_uuid)
        _last_uuid = value
    finally:
        _release()
    result: uuid.UUID = _new_uuid(_UUID)
    _set_uuid_int(result, value)
    _set_uuid_safe(result, _SAFE_UNKNOWN)
    return result


def _next_after(previous: int) -> int:
    """The next id after ``previous``, keeping the version and variant bits intact."""
    rand_b = (previous & _B62) + 1
    if rand_b <= _B62:
        return (previous & ~_B62) | rand_b
    rand_a = ((previous & _RAND_A) >> 64) + 1
    if rand_a <= 0xFFF:
        return (previous & ~_RAND_A & ~_B62) | (rand_a << 64)
    # Both counters are exhausted within one millisecond: borrow the next millisecond.
    ms = (previous >> 80) + 1
    return (ms << 80) | (0x7 << 76) | (0b10 << 62)


# Control characters (C0, DEL, C1): a key travels in broker headers (RabbitMQ's
# eventbus-key), in stream fields and in log lines, where a newline or a NUL ends or
# forges a record. Other non-printable characters (non-ASCII spaces, joiners) are text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN = 60
"""Characters of a refused key or header that an error message shows."""


def _printable(text: str) -> bool:
    """Whether ``text`` has no control character. ``isprintable()`` answers the usual
    text in a few nanoseconds; the regex looks only at text it refuses, which may be
    refused for other reasons (a non-ASCII space, a joiner)."""
    return text.isprintable() or _CONTROL.search(text) is None


def _show(value: object) -> str:
    """``value`` for an error message: its repr (escaping control characters), cut."""
    if type(value) is str and len(value) > _SHOWN:
        return f"a str of {len(value)} characters starting {value[:_SHOWN]!r}"
    return bounded(repr(value), _SHOWN + 40)


def _control_at(text: str) -> str:
    match = _CONTROL.search(text)
    assert match is not None
    return f"U+{ord(match.group()):04X} at index {match.start()}"


def check_key(key: object) -> str | None:
    """Validate an ordering key given to publish (or encoded): a non-empty str of at most
    1024 characters, none of them a control character."""
    # isprintable() inline answers the usual key in a few nanoseconds (publish's hot path).
    if key is None or (
        type(key) is str
        and 0 < len(key) <= _MAX_KEY_LENGTH
        and (key.isprintable() or _CONTROL.search(key) is None)
    ):
        return key
    raise ConfigurationError(_key_problem(key))


def check_received_key(key: object) -> str | None:
    """Validate a key read from the wire: the type and length only.

    Control characters are refused where keys enter (``check_key``), not here, so a
    message published before that rule still decodes instead of becoming a dead letter.
    """
    if key is None or (type(key) is str and 0 < len(key) <= _MAX_KEY_LENGTH):
        return key
    raise ConfigurationError(_key_problem(key))


def _key_problem(key: object) -> str:
    if type(key) is str and 0 < len(key) <= _MAX_KEY_LENGTH:
        return (
            f"key must not contain control characters (it travels in broker headers and "
            f"log lines), got {_show(key)} with {_control_at(key)}; remove or encode them"
        )
    return (
        f"key must be a non-empty str of at most {_MAX_KEY_LENGTH} characters "
        f"(the ordering key, e.g. an order id), got {_show(key)}"
    )


def check_headers(headers: object) -> Mapping[str, str]:
    """Validate headers given to publish; returns a read-only copy.

    At most 64, each a non-empty name and a value, both str, together at most 4096
    characters, without control characters (they are meant for trace context, which
    travels on as protocol headers)."""
    return _checked_headers(headers, printable=True)


def check_received_headers(headers: object) -> Mapping[str, str]:
    """Validate headers read from the wire: the limits of ``check_headers`` without the
    control-character rule (see ``check_received_key``)."""
    return _checked_headers(headers, printable=False)


def _checked_headers(headers: object, *, printable: bool) -> Mapping[str, str]:
    if headers is None:
        return EMPTY_HEADERS
    if not isinstance(headers, Mapping):
        raise ConfigurationError(f"headers must be a mapping of str to str, got {_show(headers)}")
    if len(headers) > _MAX_HEADERS:
        raise ConfigurationError(f"at most {_MAX_HEADERS} headers, got {len(headers)}")
    copy: dict[str, str] = {}
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str or not name:
            raise ConfigurationError(
                f"headers map non-empty str to str, got {_show(name)}: {_show(value)}; "
                "convert values with str() before publishing"
            )
        if len(name) + len(value) > _MAX_HEADER_LENGTH:
            raise ConfigurationError(
                f"header {_show(name)} is longer than {_MAX_HEADER_LENGTH} characters "
                f"(name and value: {len(name) + len(value)})"
            )
        if printable and not (_printable(name) and _printable(value)):
            where, text = ("name", name) if not _printable(name) else ("value", value)
            raise ConfigurationError(
                f"header {_show(name)} must not contain control characters, got its "
                f"{where} {_show(text)} with {_control_at(text)}; remove or encode them"
            )
        copy[name] = value
    return MappingProxyType(copy)


def _headers_converter(value: Mapping[str, str] | None) -> Mapping[str, str]:
    if type(value) is MappingProxyType:
        return value
    return check_headers(value)


def _aware(_instance: Any, attribute: attrs.Attribute[datetime], value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ConfigurationError(
            f"Envelope.{attribute.name} must be an aware datetime (UTC), got {value!r}"
        )


@attrs.frozen(slots=True, kw_only=True)
class Envelope:
    """An event and its metadata, as it is stored in the outbox and sent to a transport.

    ``id`` is a UUIDv7 and identifies one publication (inboxes and dead letters key on
    it). ``correlation_id`` is shared by everything one request set off: a root event's
    correlation id is its own id, and events published while handling it inherit it.
    ``causation_id`` is the id of the event whose handler published this one.
    """

    id: uuid.UUID
    name: str
    version: int
    occurred_at: datetime = attrs.field(validator=_aware)
    event: Any
    key: str | None = None
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    headers: Mapping[str, str] = attrs.field(default=EMPTY_HEADERS, converter=_headers_converter)

    @property
    def header_dict(self) -> dict[str, str]:
        """The headers as a plain dict (a copy)."""
        return dict(self.headers)

    @classmethod
    def _trusted(  # noqa: PLR0917 - positional: keywords cost ~100 ns a call here
        cls,
        id: uuid.UUID,  # noqa: A002 - the field's name
        name: str,
        version: int,
        occurred_at: datetime,
        event: Any,
        key: str | None,
        correlation_id: uuid.UUID,
        causation_id: uuid.UUID | None,
        headers: Mapping[str, str],
    ) -> Envelope:
        """Internal: an envelope from values the caller has already validated.

        Skips the attrs ``__init__`` with its converter and validator, which cost more
        than the rest of the envelope together on the publish and relay hot paths. The
        caller guarantees what they would have checked: ``occurred_at`` is an aware
        datetime, ``headers`` is a read-only mapping of str to str within the limits
        (what ``check_headers`` returns, or ``EMPTY_HEADERS``) and ``key`` passed
        ``check_key``. Not for use outside eventbus.
        """
        envelope = _new_envelope(cls)
        _set_id(envelope, id)
        _set_name(envelope, name)
        _set_version(envelope, version)
        _set_occurred_at(envelope, occurred_at)
        _set_event(envelope, event)
        _set_key(envelope, key)
        _set_correlation_id(envelope, correlation_id)
        _set_causation_id(envelope, causation_id)
        _set_headers(envelope, headers)
        return envelope


# Slot descriptors of the frozen class: what its generated __init__ sets, minus the checks.
_new_envelope = object.__new__
_set_id = Envelope.__dict__["id"].__set__
_set_name = Envelope.__dict__["name"].__set__
_set_version = Envelope.__dict__["version"].__set__
_set_occurred_at = Envelope.__dict__["occurred_at"].__set__
_set_event = Envelope.__dict__["event"].__set__
_set_key = Envelope.__dict__["key"].__set__
_set_correlation_id = Envelope.__dict__["correlation_id"].__set__
_set_causation_id = Envelope.__dict__["causation_id"].__set__
_set_headers = Envelope.__dict__["headers"].__set__


def occurred_at_of(envelope_id: uuid.UUID) -> datetime:
    """The creation time embedded in a UUIDv7, as an aware UTC datetime."""
    return datetime.fromtimestamp((envelope_id.int >> 80) / 1000, tz=UTC)
