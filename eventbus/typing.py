"""Protocols for the seams of eventbus, for type annotations and third-party backends."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable
    from datetime import datetime

    from ._envelope import Envelope
    from .deadletters import DeadLetter

__all__ = ["Codec", "DeadLetterStore"]


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


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where envelopes that a handler gave up on are kept, until replayed or purged.

    Filters: ``handler`` and ``event_name`` match exactly; ``since``/``until`` bound
    ``last_failed_at`` (inclusive, aware datetimes). Listing is oldest failure first.
    A replay *claims* a letter for ``lease`` seconds under an ``owner`` name, so two
    concurrent replays never run its handler twice; a claim that outlives its lease (its
    replayer died) can be taken over.
    """

    def add(self, letter: DeadLetter) -> None: ...

    def get(self, letter_id: uuid.UUID) -> DeadLetter: ...

    def list(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]: ...

    def count(
        self,
        *,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int: ...

    def claim(self, letter_id: uuid.UUID, *, owner: str, lease: float) -> DeadLetter | None: ...

    def resolve(self, letter_id: uuid.UUID, *, owner: str) -> bool: ...

    def release(
        self, letter_id: uuid.UUID, *, owner: str, updated: DeadLetter | None = None
    ) -> None: ...

    def purge(
        self,
        *,
        letter_ids: Iterable[uuid.UUID] | None = None,
        handler: str | None = None,
        event_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all: bool = False,  # noqa: A002 - reads as purge(all=True)
    ) -> int: ...

    def close(self) -> None: ...
