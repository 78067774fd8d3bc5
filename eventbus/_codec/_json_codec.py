"""The JSON codec: envelopes and events to compact UTF-8 JSON and back, strictly.

Only the standard library's ``json`` parser ever touches bytes from the wire, and only
classes found in the event registry (and the field types they declare) are ever built:
a message cannot name a class into existence. Everything a message could do to hurt a
consumer is refused before or while parsing: oversized input, deep nesting, NaN,
integers too long to convert, duplicate keys, unknown or missing fields.

Each event class is inspected once, on first use: its type hints are turned into a plan
of small encoder/decoder closures per field, cached on the codec, and from the plan one
encoder and one decoder are generated for the class, as attrs generates ``__init__``:
Python source with the field names written in, str/int/bool/None/Decimal fields checked
and converted inline, compiled once. After that a message costs about one call per
class, with no reflection.

Both directions have a fast path for the usual message and a general path for anything
else. ``encode`` writes the JSON text directly (the bytes ``json.dumps`` would write for
the document, exactly) and hands anything unusual to the general path, which builds the
document and raises the documented errors. ``decode`` checks the usual envelope (UUIDs in
their canonical form, say) as strictly as the general path, and hands everything it does
not accept to it, to be judged and named there.

The pieces, each in its own module of this package: the strict parser (``_parser``), the
plans of each kind of type (``_scalars``, ``_containers``, ``_choices``, ``_classes``),
the generated class code (``_generate``), the type → plan mapping (``_compiler``), and
the envelope's own fields (``_envelope_fields``); ``_wire`` holds the errors and plan
types they share. This module holds the codec that puts them together.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from json.encoder import encode_basestring as _quote
from typing import Any, ClassVar

from .._envelope import (
    _MAX_KEY_LENGTH,
    EMPTY_HEADERS,
    Envelope,
    check_received_headers,
    check_received_key,
)
from .._events import EventRegistry, EventType, default_registry
from ..errors import ConfigurationError, DecodeError, EncodeError, EventBusError
from ._classes import _ClassPlan
from ._compiler import _Compiler
from ._envelope_fields import (
    _ENVELOPE_KEYS,
    _SAFE_UNKNOWN,
    _UUID_TEXT,
    _check_version,
    _decode_envelope_key,
    _decode_envelope_time,
    _decode_envelope_uuid,
    _decode_headers,
    _envelope_key,
    _envelope_time,
    _envelope_uuid,
    _key_mismatch,
    _new_uuid,
    _set_uuid_int,
    _set_uuid_safe,
    _time_text,
    _trusted_envelope,
    _Unusual,
    _uuid_of,
)
from ._parser import _dumps, _parse_json, _scan, _serialize
from ._scalars import _MAX_DATETIME_LENGTH, _uuid_text
from ._wire import _ABSENT, _PlanError, _show, _TooDeepError, _WireError

__all__ = ["JSONCodec"]


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _positive(value: object, name: str) -> int:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


class JSONCodec:
    """Envelopes to compact UTF-8 JSON and back.

    ``max_size`` bounds a message in bytes (both ways: an event too large to be read is
    refused when it is published) and ``max_depth`` bounds the nesting of JSON arrays and
    objects, the envelope itself counting as one level.
    """

    content_type: ClassVar[str] = "application/json"

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        max_size: int = 1_048_576,
        max_depth: int = 32,
    ) -> None:
        if registry is not None and not isinstance(registry, EventRegistry):
            raise ConfigurationError(f"registry must be an EventRegistry, got {registry!r}")
        self._registry = default_registry if registry is None else registry
        self._max_size = _positive(max_size, "max_size")
        self._max_depth = _positive(max_depth, "max_depth")
        self._plans: dict[type[Any], _ClassPlan] = {}
        # The name and version of each event class as encode writes them, with the
        # registration they were read from (re-registering replaces it).
        self._heads: dict[type[Any], tuple[EventType, str]] = {}

    @property
    def registry(self) -> EventRegistry:
        return self._registry

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_depth(self) -> int:
        return self._max_depth

    def __repr__(self) -> str:
        return f"JSONCodec(max_size={self._max_size}, max_depth={self._max_depth})"

    # -- encoding --

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope as compact UTF-8 JSON; EncodeError if it cannot be written."""
        if type(envelope) is Envelope:
            try:
                raw = self._encode_text(envelope).encode()  # UTF-8, strict
            except Exception:  # noqa: S110 - the general path raises the real error
                pass
            else:
                if len(raw) <= self._max_size:
                    return raw
        return self._encode_general(envelope)

    def _encode_text(self, envelope: Envelope) -> str:
        """The fast path of encode: the JSON text written directly, byte for byte what
        ``_encode_general`` writes. It raises on anything unusual (wrong types, a
        subclass, a lone surrogate, a failing field) and encode then takes the general
        path, which raises the documented EncodeError, or writes what this could not."""
        event = envelope.event
        info = self._registry.info(type(event))
        if envelope.name != info.name or envelope.version != info.version:
            raise _Unusual
        plan = self._plans.get(info.cls) or self._compile(info.cls, EncodeError)
        data = plan.fast_text(event, self._max_depth - 1)
        ident = envelope.id
        if type(ident) is not uuid.UUID:
            raise _Unusual
        ident_text = _uuid_text(ident)
        correlation = envelope.correlation_id
        if correlation is ident:  # a root publication: its own correlation id
            correlation_text = ident_text
        elif type(correlation) is uuid.UUID:
            correlation_text = _uuid_text(correlation)
        else:
            raise _Unusual
        causation = envelope.causation_id
        if causation is None:
            causation_text = "null"
        elif type(causation) is uuid.UUID:
            causation_text = f'"{_uuid_text(causation)}"'
        else:
            raise _Unusual
        head = self._heads.get(info.cls)
        if head is None or head[0] is not info:
            text = f'","name":{_quote(info.name)},"version":{int.__repr__(info.version)},'
            head = self._heads[info.cls] = (info, text + '"occurred_at":"')
        key = envelope.key
        if key is None:
            key_text = "null"
        elif type(key) is str and 0 < len(key) <= _MAX_KEY_LENGTH and key.isprintable():
            # check_key's test, or the general path decides (and explains a refusal)
            key_text = _quote(key)
        else:
            raise _Unusual
        headers = envelope.headers
        # The document _encode_general builds, in its order, as _serialize writes it.
        return "".join(
            (
                '{"id":"',
                ident_text,
                head[1],
                _time_text(envelope.occurred_at),
                '","key":',
                key_text,
                ',"correlation_id":"',
                correlation_text,
                '","causation_id":',
                causation_text,
                ',"headers":',
                "{}" if headers is EMPTY_HEADERS else _dumps(dict(headers)),
                ',"data":',
                data,
                "}",
            )
        )

    def _encode_general(self, envelope: Envelope) -> bytes:
        if not isinstance(envelope, Envelope):
            raise EncodeError(f"expected an Envelope, got {_show(envelope)}")
        info = self._registry.info(type(envelope.event))
        if envelope.name != info.name or envelope.version != info.version:
            raise EncodeError(
                f"the envelope says {envelope.name!r} version {envelope.version}, but its "
                f"event is a {info.cls.__qualname__}, registered as {info.name!r} version "
                f"{info.version}"
            )
        causation = envelope.causation_id
        document = {
            "id": _envelope_uuid(envelope.id, "id"),
            "name": info.name,
            "version": info.version,
            "occurred_at": _envelope_time(envelope.occurred_at),
            "key": _envelope_key(envelope.key),
            "correlation_id": _envelope_uuid(envelope.correlation_id, "correlation_id"),
            "causation_id": None
            if causation is None
            else _envelope_uuid(causation, "causation_id"),
            "headers": dict(envelope.headers),
            "data": self._encode_data(info, envelope.event),
        }
        raw = _serialize(document)
        if len(raw) > self._max_size:
            raise EncodeError(
                f"the encoded {info.name!r} message is {len(raw)} bytes, over the limit of "
                f"{self._max_size} bytes (max_size): send less data, or a reference to it"
            )
        return raw

    def encode_event(self, event: object) -> dict[str, Any]:
        """The payload of ``event`` as a JSON-ready dict (without the envelope)."""
        info = self._registry.info(type(event))
        return self._encode_data(info, event)

    def _encode_data(self, info: EventType, event: object) -> dict[str, Any]:
        plan = self._plans.get(info.cls) or self._compile(info.cls, EncodeError)
        try:
            return plan.encode(event, self._max_depth - 1)
        except _WireError as exc:
            raise EncodeError(
                f"cannot encode {info.name!r} ({info.cls.__qualname__}): "
                f"{exc.path('data')}: {self._message(exc)}"
            ) from exc.__cause__
        except RecursionError:
            raise EncodeError(
                f"cannot encode {info.name!r}: the event is nested too deeply (or refers to itself)"
            ) from None

    # -- decoding --

    def decode(self, data: bytes | bytearray | memoryview | str) -> Envelope:
        """Parse and validate one envelope; DecodeError for anything malformed.

        UnknownEventError (from the registry) for a well-formed message whose event
        name, or version, this process does not know.
        """
        document: Any = _ABSENT
        if type(data) is bytes and len(data) <= self._max_size:
            # The usual message, bytes as encode wrote them: what _parse does, minus its
            # checks for the other kinds of input and JSONDecoder.decode's whitespace
            # searches. Anything else (an error of any kind too) goes to _parse, which
            # does it all again and raises the documented error.
            try:
                text = data.decode()
                document, end = _scan(text, 0)
            except Exception:  # _parse raises it again, with its message
                document = _ABSENT
            else:
                if end != len(text):
                    document = _ABSENT
        if document is _ABSENT:
            document = self._parse(data)
        if type(document) is dict and len(document) == len(_ENVELOPE_KEYS):
            envelope = self._decode_fast(document)
            if envelope is not None:
                return envelope
        return self._decode_general(document)

    def _decode_fast(self, document: dict[str, Any]) -> Envelope | None:
        """The fast path of decode, for a well-formed envelope. It checks every envelope
        field as strictly as the general path, with cheaper tests for the usual forms
        (a UUID in its canonical text, say), and returns None for anything it does not
        accept, for the general path to judge and name in its error. The event itself
        is decoded the same way on both paths, with the same errors."""
        try:
            name = document["name"]
            version = document["version"]
            ident = document["id"]
            occurred = document["occurred_at"]
            key = document["key"]
            correlation = document["correlation_id"]
            causation = document["causation_id"]
            headers = document["headers"]
            data = document["data"]
        except KeyError:
            return None
        if type(name) is not str or type(version) is not int or version < 1:
            return None
        if type(ident) is not str or not _UUID_TEXT.fullmatch(ident):
            return None
        envelope_id: uuid.UUID = _new_uuid(uuid.UUID)  # as _uuid_of, without the call
        _set_uuid_int(envelope_id, int(ident.replace("-", ""), 16))
        _set_uuid_safe(envelope_id, _SAFE_UNKNOWN)
        if correlation == ident:  # a root publication: its own correlation id
            correlation_id = envelope_id
        elif type(correlation) is str and _UUID_TEXT.fullmatch(correlation):
            correlation_id = _uuid_of(int(correlation.replace("-", ""), 16))
        else:
            return None
        causation_id: uuid.UUID | None = None
        if causation is not None:
            if type(causation) is not str or not _UUID_TEXT.fullmatch(causation):
                return None
            causation_id = _uuid_of(int(causation.replace("-", ""), 16))
        if type(occurred) is not str or len(occurred) > _MAX_DATETIME_LENGTH:
            return None
        try:
            occurred_at = datetime.fromisoformat(occurred)
        except ValueError:
            return None
        if occurred_at.tzinfo is None:  # else a datetime.timezone: utcoffset() is not None
            return None
        if type(headers) is not dict:
            return None
        try:
            if key is not None:
                check_received_key(key)
            checked_headers = check_received_headers(headers) if headers else EMPTY_HEADERS
        except ConfigurationError:
            return None
        info = self._registry.by_name(name)
        event = self._decode_data(info, version, data, self._max_depth - 1)
        # Every field is checked above as Envelope's converter and validator would.
        return _trusted_envelope(
            envelope_id,
            info.name,
            info.version,  # the registered version, not the wire one: the event was upcast
            occurred_at,
            event,
            key,
            correlation_id,
            causation_id,
            checked_headers,
        )

    def _decode_general(self, document: Any) -> Envelope:
        if type(document) is not dict:
            raise DecodeError(
                f"an envelope is a JSON object, got {_json_kind(document)} at the top level"
            )
        if document.keys() != _ENVELOPE_KEYS:
            raise DecodeError(_key_mismatch(document.keys()))
        name = document["name"]
        version = document["version"]
        if type(name) is not str:
            raise DecodeError(f"cannot decode envelope: name: expected a string, got {_show(name)}")
        _check_version(version)
        envelope_id = _decode_envelope_uuid(document["id"], "id")
        occurred_at = _decode_envelope_time(document["occurred_at"])
        key = _decode_envelope_key(document["key"])
        correlation_id = _decode_envelope_uuid(document["correlation_id"], "correlation_id")
        causation = document["causation_id"]
        causation_id = (
            None if causation is None else _decode_envelope_uuid(causation, "causation_id")
        )
        headers = _decode_headers(document["headers"])
        info = self._registry.by_name(name)
        event = self._decode_data(info, version, document["data"], self._max_depth - 1)
        try:
            return Envelope(
                id=envelope_id,
                name=info.name,
                # The registered version, not the wire one: the event was upcast to it.
                version=info.version,
                occurred_at=occurred_at,
                event=event,
                key=key,
                correlation_id=correlation_id,
                causation_id=causation_id,
                headers=headers,
            )
        except (ConfigurationError, TypeError, ValueError) as exc:
            raise DecodeError(f"cannot decode envelope: {exc}") from exc

    def decode_event(self, name: str, version: int, data: Any) -> Any:
        """Build the registered class of ``name`` from a payload of ``version``.

        The payload is upcast first when it is older than the registered version.
        """
        info = self._registry.by_name(name)
        _check_version(version)
        return self._decode_data(info, version, data, self._max_depth)

    def _decode_data(self, info: EventType, version: int, data: Any, depth: int) -> Any:
        if type(data) is not dict:
            raise DecodeError(
                f"cannot decode {info.name!r}: data: expected a JSON object, got {_show(data)}"
            )
        if version != info.version:
            data = self._upcast(info, version, data)
        plan = self._plans.get(info.cls) or self._compile(info.cls, DecodeError)
        try:
            return plan.fast_decode(data, depth)
        except _WireError as exc:
            raise DecodeError(
                f"cannot decode {info.name!r}: {exc.path('data')}: {self._message(exc)}"
            ) from exc.__cause__
        except RecursionError:
            raise DecodeError(f"cannot decode {info.name!r}: data is nested too deeply") from None

    def _upcast(self, info: EventType, version: int, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._registry.upcast(info.name, version, data)
        except EventBusError:
            raise  # UnknownEventError for a newer version or a missing step, as it is
        except Exception as exc:
            raise DecodeError(
                f"cannot decode {info.name!r}: upcasting the version {version} payload to "
                f"version {info.version} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _parse(self, data: bytes | bytearray | memoryview | str) -> Any:
        kind = type(data)
        if kind is bytes or kind is str:
            size = len(data)
        elif isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, (bytes, bytearray, str)):
            size = len(data)
        else:
            raise DecodeError(f"expected bytes or str to decode, got {type(data).__name__}")
        # Before anything else: refusing a huge message must cost nothing.
        if size > self._max_size:
            raise DecodeError(
                f"message is {size} bytes, over the limit of {self._max_size} bytes (max_size)"
            )
        if isinstance(data, str):
            text = data
        else:
            try:
                text = str(data, "utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(
                    f"message is not valid UTF-8 ({exc.reason} at byte {exc.start}): "
                    "it is not a JSON envelope"
                ) from None
        return _parse_json(text)

    # -- plans --

    def _compile(self, cls: type[Any], error: type[EncodeError | DecodeError]) -> _ClassPlan:
        compiler = _Compiler(self._plans)
        verb = "encode" if error is EncodeError else "decode"
        try:
            plan = compiler.class_plan(cls)
        except _PlanError as exc:
            raise error(f"cannot {verb} {cls.__qualname__}: {exc}") from None
        # Published only once every class it reaches is complete.
        self._plans.update(compiler.pending)
        return plan

    def _message(self, exc: _WireError) -> str:
        if isinstance(exc, _TooDeepError):
            return f"nested deeper than max_depth={self._max_depth}"
        return exc.message
