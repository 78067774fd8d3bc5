"""An outbox store and a transport as a third party would write them: the public surface
alone (``eventbus``, ``eventbus.typing``, ``eventbus.outbox``, ``eventbus.transports``,
``eventbus.errors``), checked by tests/unit/test_public_surface.py.

Neither reimplements a database or a broker: ``ThirdPartyOutbox`` adapts a
``SQLiteOutbox`` and ``ThirdPartyTransport`` a ``MemoryTransport``, each member spelled
out, so that everything the contract suites and the bus use of them goes through the
protocols of ``eventbus.typing`` (and the optional abilities they declare, which the bus
finds with ``isinstance``). Anything else a test reaches for would fail here first.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

from eventbus import SQLiteOutbox, redact
from eventbus.errors import ConfigurationError
from eventbus.outbox import ClaimedRow, OutboxStatus, PendingRow
from eventbus.transports import Capabilities, MemoryTransport, Message, url_options
from eventbus.typing import Received, TransactionControl

__all__ = ["ThirdPartyOutbox", "ThirdPartyTransport"]


class ThirdPartyOutbox:
    """``OutboxStore`` with the inbox, plus what it may offer: its own transaction control,
    open-transaction detection, and its schema."""

    def __init__(self, path: str | Path, **options: Any) -> None:
        self._store = SQLiteOutbox(path, **options)
        self.batch: int = self._store.batch
        self.lease: float = self._store.lease
        self.poll_interval: float = self._store.poll_interval
        self.resource_type: type[Any] = self._store.resource_type

    def __repr__(self) -> str:
        return f"<ThirdPartyOutbox over {self._store!r}>"

    # -- OutboxStore -----------------------------------------------------------------------

    def write(self, connection: Any, rows: Sequence[PendingRow]) -> None:
        self._store.write(connection, rows)

    def write_now(self, rows: Sequence[PendingRow]) -> None:
        self._store.write_now(rows)

    def claim(self, *, owner: str, batch: int, lease: float) -> list[ClaimedRow]:
        return self._store.claim(owner=owner, batch=batch, lease=lease)

    def complete(
        self,
        ids: Iterable[int],
        *,
        owner: str,
        processed: Sequence[tuple[str, uuid.UUID]] = (),
    ) -> int:
        return self._store.complete(ids, owner=owner, processed=processed)

    def reschedule(
        self, row_id: int, *, owner: str, attempts: int, delay: float, error: str
    ) -> bool:
        return self._store.reschedule(
            row_id, owner=owner, attempts=attempts, delay=delay, error=error
        )

    def renew(self, ids: Iterable[int], *, owner: str, lease: float) -> int:
        return self._store.renew(ids, owner=owner, lease=lease)

    def status(self) -> OutboxStatus:
        return self._store.status()

    @contextmanager
    def handler_transaction(self) -> Iterator[Any]:
        with self._store.handler_transaction() as connection:
            yield connection

    def close(self) -> None:
        self._store.close()

    # -- Inbox -----------------------------------------------------------------------------

    def seen(self, handler: str, envelope_id: uuid.UUID) -> bool:
        return self._store.seen(handler, envelope_id)

    def seen_many(self, pairs: Sequence[tuple[str, uuid.UUID]]) -> set[tuple[str, uuid.UUID]]:
        return self._store.seen_many(pairs)

    def mark(self, handler: str, envelope_id: uuid.UUID, connection: Any = None) -> bool:
        return self._store.mark(handler, envelope_id, connection)

    # -- what it may offer -----------------------------------------------------------------

    def transaction_control(self, resource: object) -> TransactionControl | None:
        return self._store.transaction_control(resource)

    def open_transaction(self) -> object | None:
        return self._store.open_transaction()

    def schema_sql(self) -> str:
        return self._store.schema_sql()

    def create_schema(self) -> None:
        self._store.create_schema()

    # -- for the application (not the bus): set up a connection of its own ----------------

    def configure(self, connection: Any) -> None:
        self._store.configure(connection)


class _Received:
    """A message of ``ThirdPartyTransport``, settled through the one it wraps."""

    __slots__ = ("_inner", "body", "delivery_count", "message_id", "topic")

    def __init__(self, inner: Received) -> None:
        self._inner = inner
        self.topic = inner.topic
        self.body = inner.body
        self.message_id = f"tp-{inner.message_id}"
        self.delivery_count = inner.delivery_count

    async def ack(self) -> None:
        await self._inner.ack()

    async def nack(self, *, requeue: bool = True) -> None:
        await self._inner.nack(requeue=requeue)


class ThirdPartyTransport:
    """``thirdparty://NAME``: a transport whose broker is a named in-process one."""

    capabilities: ClassVar[Capabilities] = MemoryTransport.capabilities

    def __init__(self, name: str | None = None) -> None:
        self._name = name
        self._broker = MemoryTransport(name)

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        parts = urlsplit(url)
        if parts.scheme != "thirdparty":
            raise ConfigurationError(
                f"ThirdPartyTransport takes thirdparty:// URLs, got {redact(url)!r}"
            )
        url_options(url, {}, options, client_options=(), transport="ThirdPartyTransport")
        return cls(parts.netloc or None)

    def __repr__(self) -> str:
        return f"<ThirdPartyTransport thirdparty://{self._name or ''}>"

    async def connect(self) -> None:
        await self._broker.connect()

    async def publish(self, topic: str, /, *messages: Message) -> None:
        await self._broker.publish(topic, *messages)

    async def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]:
        inner = self._broker.subscribe(topics, group=group)
        try:
            async for received in inner:
                yield _Received(received)
        finally:
            await inner.aclose()  # type: ignore[attr-defined] # an async generator

    def pending(self, group: str) -> int:
        """Messages of ``group`` not acknowledged yet (``SupportsPending``: drain waits)."""
        return self._broker.pending(group)

    async def aclose(self) -> None:
        await self._broker.aclose()
