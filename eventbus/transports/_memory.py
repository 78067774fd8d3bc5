"""The in-process transport: the reference every broker transport is held to.

A broker in memory, thread-safe, so a relay and a worker on different event loops (two
buses in one process) can share it. Per topic, each consumer group has its own queue;
a message goes to one consumer of each group, stays unacknowledged until ``ack``, and
goes back to the front of its group's queue (in publish order) when its consumer
``nack``s it or stops without acknowledging it. Nothing survives the process.

``memory://`` gives each transport a broker of its own; ``memory://NAME`` shares the
broker called NAME with every other ``memory://NAME`` transport of the process.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import threading
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import urlsplit

import attrs

from .._records import Capabilities, Message
from .._redact import redact
from ..errors import ConfigurationError, TransportError
from ._options import url_options

if TYPE_CHECKING:
    from ..typing import Received

__all__ = ["MemoryTransport"]


@attrs.define(eq=False)
class _Entry:
    seq: int
    message: Message
    deliveries: int = 0


@attrs.define(eq=False)
class _Queue:
    """One group's queue of one topic: ready entries in publish order."""

    ready: list[_Entry] = attrs.Factory(list)
    held: int = 0
    """Entries a consumer took and has not settled yet."""

    def put_back(self, entry: _Entry) -> None:
        seqs = [e.seq for e in self.ready]
        self.ready.insert(bisect.bisect_left(seqs, entry.seq), entry)


@attrs.define(eq=False)
class _Topic:
    groups: dict[str, _Queue] = attrs.Factory(dict)
    backlog: list[Message] = attrs.Factory(list)
    """Messages published before any group subscribed: the first group gets them."""


class _Broker:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, _Topic] = {}
        self.seq = itertools.count(1)
        self.waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def queue(self, topic: str, group: str) -> _Queue:
        """The group's queue of ``topic``, made on first use (call with the lock held)."""
        state = self.topics.setdefault(topic, _Topic())
        queue = state.groups.get(group)
        if queue is None:
            queue = state.groups[group] = _Queue()
            if len(state.groups) == 1:
                queue.ready = [_Entry(next(self.seq), m) for m in state.backlog]
                state.backlog = []
        return queue

    def wake(self) -> None:
        """Tell every waiting consumer to look again (call with the lock held)."""
        for loop, event in list(self.waiters):
            if loop.is_closed():
                self.waiters.discard((loop, event))
                continue
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop closed meanwhile
                self.waiters.discard((loop, event))


_named: dict[str, _Broker] = {}
"""Named brokers live as long as the process: a bus closed and another made later on the
same ``memory://NAME`` see the same messages, as they would on a real broker."""
_named_lock = threading.Lock()


class _Received:
    __slots__ = (
        "_entry",
        "_subscription",
        "body",
        "delivery_count",
        "message_id",
        "topic",
    )

    def __init__(self, subscription: _Subscription, entry: _Entry) -> None:
        self._subscription = subscription
        self._entry = entry
        self.topic = entry.message.topic
        self.body = entry.message.body
        self.message_id = str(entry.seq)
        self.delivery_count = entry.deliveries

    def __repr__(self) -> str:
        return f"<memory message {self.message_id} on {self.topic!r}>"

    async def ack(self) -> None:
        self._subscription.settle(self._entry, requeue=False)

    async def nack(self, *, requeue: bool = True) -> None:
        self._subscription.settle(self._entry, requeue=requeue)


class _Subscription:
    """One consumer: takes entries from its group's queues and owns them until settled."""

    def __init__(self, broker: _Broker, topics: Sequence[str], group: str) -> None:
        self._broker = broker
        self._group = group
        with broker.lock:
            self._queues = [broker.queue(topic, group) for topic in topics]
        self._held: dict[int, tuple[_Queue, _Entry]] = {}

    def take(self) -> _Received | None:
        """The oldest ready entry of this consumer's topics, or None."""
        with self._broker.lock:
            best: _Queue | None = None
            for queue in self._queues:
                if queue.ready and (best is None or queue.ready[0].seq < best.ready[0].seq):
                    best = queue
            if best is None:
                return None
            entry = best.ready.pop(0)
            entry.deliveries += 1
            best.held += 1
            self._held[entry.seq] = (best, entry)
            return _Received(self, entry)

    def settle(self, entry: _Entry, *, requeue: bool) -> None:
        with self._broker.lock:
            held = self._held.pop(entry.seq, None)
            if held is None:
                return  # settled already, or handed back when the consumer stopped
            held[0].held -= 1
            if requeue:
                held[0].put_back(entry)
                self._broker.wake()

    def close(self) -> None:
        """Hand every unacknowledged entry back to its queue, for the group's next consumer."""
        with self._broker.lock:
            for queue, entry in self._held.values():
                queue.held -= 1
                queue.put_back(entry)
            self._held.clear()
            self._broker.wake()


class MemoryTransport:
    """``memory://`` (a broker of its own) or ``memory://NAME`` (shared in the process)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=False,
        ordered_per_key=True,
        consumer_groups=True,
        counts_deliveries=True,
        ordered_batches=True,  # a publish appends every message at once, or none
    )

    def __init__(self, name: str | None = None) -> None:
        if name is None:
            self._broker = _Broker()
        else:
            with _named_lock:
                broker = _named.get(name)
                if broker is None:
                    broker = _named[name] = _Broker()
            self._broker = broker
        self._name = name
        self._closed = False

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        parts = urlsplit(url)
        if parts.scheme.lower() != "memory":
            raise ConfigurationError(f"MemoryTransport takes memory:// URLs, got {redact(url)!r}")
        # No options, in keywords or the query: a query here is a mistake, not ignored.
        url_options(url, {}, options, client_options=(), transport="MemoryTransport")
        name = parts.netloc + parts.path.rstrip("/")
        return cls(name or None)

    def __repr__(self) -> str:
        return f"<MemoryTransport memory://{self._name or ''}>"

    async def connect(self) -> None:
        if self._closed:
            raise TransportError("this MemoryTransport is closed; make a new one")

    async def publish(self, topic: str, /, *messages: Message) -> None:
        if self._closed:
            raise TransportError("this MemoryTransport is closed; make a new one")
        for message in messages:
            if not isinstance(message, Message) or message.topic != topic:
                raise TransportError(
                    f"publish({topic!r}, ...) takes Messages of that topic, got {message!r}"
                )
        broker = self._broker
        with broker.lock:
            state = broker.topics.setdefault(topic, _Topic())
            if not state.groups:
                state.backlog.extend(messages)
            for queue in state.groups.values():
                queue.ready.extend(_Entry(next(broker.seq), m) for m in messages)
            broker.wake()

    async def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]:
        if self._closed:
            raise TransportError("this MemoryTransport is closed; make a new one")
        if isinstance(topics, str) or not topics:
            raise ConfigurationError(f"subscribe takes a sequence of topics, got {topics!r}")
        loop = asyncio.get_running_loop()
        subscription = _Subscription(self._broker, topics, group)
        event = asyncio.Event()
        waiter = (loop, event)
        with self._broker.lock:
            self._broker.waiters.add(waiter)
        try:
            while not self._closed:
                received = subscription.take()
                if received is None:
                    await event.wait()
                    event.clear()
                    continue
                yield received
        finally:
            with self._broker.lock:
                self._broker.waiters.discard(waiter)
            subscription.close()

    def pending(self, group: str) -> int:
        """Messages of ``group`` not acknowledged yet, ready or held (for ``drain``)."""
        with self._broker.lock:
            return sum(
                len(state.groups[group].ready) + state.groups[group].held
                for state in self._broker.topics.values()
                if group in state.groups
            )

    async def aclose(self) -> None:
        self._closed = True
        with self._broker.lock:
            self._broker.wake()
