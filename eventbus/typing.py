"""Protocols for the seams of eventbus, for type annotations and third-party backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._envelope import Envelope

__all__ = ["Codec"]


@runtime_checkable
class Codec(Protocol):
    """Turns envelopes into bytes and back. ``eventbus.JSONCodec`` is the default.

    ``decode`` must refuse anything that is not a registered event (``UnknownEventError``)
    and anything malformed or too large (``DecodeError``); it must never execute or import
    code named by its input.
    """

    content_type: ClassVar[str]

    def encode(self, envelope: Envelope) -> bytes: ...

    def decode(self, data: bytes | bytearray | memoryview | str) -> Envelope: ...

    def encode_event(self, event: object) -> dict[str, Any]: ...

    def decode_event(self, name: str, version: int, data: Any) -> Any: ...
