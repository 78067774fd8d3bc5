"""The envelope's own fields (id, occurred_at, key, headers, ...) on the wire, both ways.

The general paths of JSONCodec check each field here and raise the documented
EncodeError or DecodeError; the fast paths use the cheaper pieces: the isoformat of a
UTC time cached per second, and UUIDs read from their canonical text without
``uuid.UUID``'s parsing of the other forms.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .._envelope import Envelope, check_key, check_received_headers, check_received_key
from ..errors import ConfigurationError, DecodeError, EncodeError
from ._scalars import _decode_datetime, _decode_uuid
from ._wire import Converter, _segment, _show, _WireError

_ENVELOPE_KEYS = frozenset(
    {
        "id",
        "name",
        "version",
        "occurred_at",
        "key",
        "correlation_id",
        "causation_id",
        "headers",
        "data",
    }
)


class _Unusual(Exception):  # noqa: N818 - not an error: a signal to take the general path
    """Raised by the fast path of encode for what only the general path handles."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# (days, seconds) since the epoch and the isoformat of that second, without its offset:
# the date and time of day cost more to format than the rest of an envelope together, and
# change once a second. Replaced as a whole, so a reader always sees a consistent triple.
_last_second: tuple[int, int, str] = (0, 0, _EPOCH.replace(tzinfo=None).isoformat())


def _time_text(value: object) -> str:
    """What value.isoformat() gives for an exact aware datetime (nothing in it needs JSON
    escaping); raises _Unusual for anything else (a subclass may format itself)."""
    global _last_second  # noqa: PLW0603 - one cache for the process
    if type(value) is not datetime:
        raise _Unusual
    if value.tzinfo is not UTC:
        if value.utcoffset() is None:
            raise _Unusual
        return value.isoformat()
    # Exact (timedelta arithmetic): the same second always gives the same days and seconds.
    delta = value - _EPOCH
    days = delta.days
    seconds = delta.seconds
    cached_days, cached_seconds, text = _last_second
    if seconds != cached_seconds or days != cached_days:
        text = value.replace(microsecond=0, tzinfo=None).isoformat()
        _last_second = (days, seconds, text)
    micro = delta.microseconds
    return "%s.%06d+00:00" % (text, micro) if micro else text + "+00:00"  # noqa: UP031


def _envelope_uuid(value: object, field: str) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise EncodeError(f"Envelope.{field} must be a UUID, got {_show(value)}")


def _envelope_time(value: object) -> str:
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.isoformat()
    raise EncodeError(f"Envelope.occurred_at must be an aware datetime, got {_show(value)}")


def _envelope_key(value: object) -> str | None:
    try:
        return check_key(value)
    except ConfigurationError as exc:
        raise EncodeError(f"Envelope.key: {exc}") from None


def _key_mismatch(keys: Iterable[str]) -> str:
    present = set(keys)
    problems = []
    missing = sorted(_ENVELOPE_KEYS - present)
    extra = sorted(present - _ENVELOPE_KEYS)
    if missing:
        problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
    if extra:
        problems.append(f"unexpected key(s) {', '.join(repr(k[:40]) for k in extra[:5])}")
    return f"cannot decode envelope: {'; '.join(problems)}"


def _check_version(version: object) -> None:
    if type(version) is not int or version < 1:
        raise DecodeError(f"cannot decode: version: expected an integer >= 1, got {_show(version)}")


def _envelope_field(decode: Converter, value: object, field: str) -> Any:
    try:
        return decode(value, 0)
    except _WireError as exc:
        raise DecodeError(f"cannot decode envelope: {field}: {exc.message}") from None


# The canonical text of a UUID, which encode writes: read without uuid.UUID's parsing of
# the other forms it accepts (braces, "urn:uuid:", no dashes), which go the general way.
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_new_uuid = object.__new__
_set_uuid_int = uuid.UUID.__dict__["int"].__set__
_set_uuid_safe = uuid.UUID.__dict__["is_safe"].__set__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown
_trusted_envelope = Envelope._trusted


def _uuid_of(value: int) -> uuid.UUID:
    """uuid.UUID(int=value) for a value known to fit in 128 bits, as uuid.UUID builds it."""
    result: uuid.UUID = _new_uuid(uuid.UUID)
    _set_uuid_int(result, value)
    _set_uuid_safe(result, _SAFE_UNKNOWN)
    return result


def _decode_envelope_uuid(value: object, field: str) -> uuid.UUID:
    result: uuid.UUID = _envelope_field(_decode_uuid, value, field)
    return result


def _decode_envelope_time(value: object) -> datetime:
    result: datetime = _envelope_field(_decode_datetime, value, "occurred_at")
    return result


def _decode_envelope_key(value: object) -> str | None:
    if value is not None and type(value) is not str:
        raise DecodeError(
            f"cannot decode envelope: key: expected a string or null, got {_show(value)}"
        )
    try:
        return check_received_key(value)
    except ConfigurationError as exc:
        raise DecodeError(f"cannot decode envelope: key: {exc}") from None


def _decode_headers(value: object) -> Mapping[str, str]:
    if type(value) is not dict:
        raise DecodeError(
            f"cannot decode envelope: headers: expected an object, got {_show(value)}"
        )
    for name, item in value.items():
        if type(item) is not str:
            raise DecodeError(
                f"cannot decode envelope: headers{_segment(name)}: expected a string, "
                f"got {_show(item)}"
            )
    # The count and length limits, as a read-only copy (which Envelope's converter, with
    # check_headers' control-character rule for what is published, then leaves alone).
    try:
        return check_received_headers(value)
    except ConfigurationError as exc:
        raise DecodeError(f"cannot decode envelope: {exc}") from None
