"""The envelope: an event plus the metadata that travels with it, and UUIDv7 ids."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs

from .errors import ConfigurationError

__all__ = ["Envelope", "uuid7"]

EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})
_MAX_KEY_LENGTH = 1024
_MAX_HEADERS = 64
_MAX_HEADER_LENGTH = 4096

# Not a CSPRNG on purpose: ids need uniqueness, not secrecy, and os.urandom costs a
# system call per id. The random module reseeds itself in a forked child.
_random_bits = random.getrandbits
_uuid_lock = threading.Lock()
_last_uuid = 0
_new_uuid = object.__new__
_set = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def uuid7() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits.

    Ids from one process are strictly increasing even within a millisecond (the random
    part is incremented instead, as RFC 9562 section 6.2 method 2 allows), so sorting by
    id sorts by creation time.
    """
    global _last_uuid  # noqa: PLW0603 - one process-wide monotonic sequence
    ms = time.time_ns() // 1_000_000
    rand = _random_bits(74)
    # version 7 in bits 76-79, variant 0b10 in bits 62-63, random elsewhere.
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & _B62)
    with _uuid_lock:
        if value <= _last_uuid:
            # Same millisecond (or the clock stepped back): continue the sequence.
            value = _next_after(_last_uuid)
        _last_uuid = value
    result = _new_uuid(uuid.UUID)
    _set(result, "int", value)
    _set(result, "is_safe", _SAFE_UNKNOWN)
    return result


_B62 = (1 << 62) - 1
_RAND_A = 0xFFF << 64


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


def check_key(key: object) -> str | None:
    """Validate an ordering key given to publish."""
    if key is None or (type(key) is str and 0 < len(key) <= _MAX_KEY_LENGTH):
        return key
    raise ConfigurationError(
        f"key must be a non-empty str of at most {_MAX_KEY_LENGTH} characters "
        f"(the ordering key, e.g. an order id), got {key!r}"
    )


def check_headers(headers: object) -> Mapping[str, str]:
    """Validate headers given to publish; returns a read-only copy."""
    if headers is None:
        return EMPTY_HEADERS
    if not isinstance(headers, Mapping):
        raise ConfigurationError(f"headers must be a mapping of str to str, got {headers!r}")
    if len(headers) > _MAX_HEADERS:
        raise ConfigurationError(f"at most {_MAX_HEADERS} headers, got {len(headers)}")
    copy: dict[str, str] = {}
    for name, value in headers.items():
        if type(name) is not str or type(value) is not str or not name:
            raise ConfigurationError(
                f"headers map non-empty str to str, got {name!r}: {value!r}; "
                "convert values with str() before publishing"
            )
        if len(name) + len(value) > _MAX_HEADER_LENGTH:
            raise ConfigurationError(
                f"header {name!r} is longer than {_MAX_HEADER_LENGTH} characters"
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


def occurred_at_of(envelope_id: uuid.UUID) -> datetime:
    """The creation time embedded in a UUIDv7, as an aware UTC datetime."""
    return datetime.fromtimestamp((envelope_id.int >> 80) / 1000, tz=UTC)
