"""Redis Streams as an eventbus transport: ``redis://`` and ``rediss://`` (TLS).

What a user needs (the URL, the options, durability, redelivery, order, limits) is in
README.md, "Going distributed > Redis Streams". The design, for maintainers:

- A topic is the stream ``<prefix><topic>``; a group is a consumer group made at id 0 with
  ``MKSTREAM``, so it reads what was published before it. Each subscription is one
  consumer (``host:pid:random``), and one ``XREADGROUP`` reads all its streams: hence no
  Redis Cluster (the streams' keys may sit on several slots).
- ``publish`` is one pipelined round trip of ``XADD`` (fields ``body``, ``id`` = the
  envelope id, ``key``). redis-py's own retries are off: a retried ``XADD`` whose reply
  was lost is stored twice (redis-py #3554); only the relay retries, and receivers dedup
  by envelope id (the inbox), never by entry id.
- Redelivery is the group's pending list: a subscription rereads its own pending entries
  after a reconnect, takes over entries idle past ``claim_idle`` (``XAUTOCLAIM``, every
  ``claim_idle / 2``), and ``nack(requeue=True)`` is an ``XCLAIM`` to itself, ahead of
  what it has not yielded. ``delivery_count`` is ``XPENDING``'s, so it survives crashes;
  ``ack`` and ``nack(requeue=False)`` are ``XACK``.
- Redis 7.0 has no ``XTRIM ... ACKED``: ``maxlen`` trims by ``MINID`` below every group's
  oldest unacknowledged entry, in a small Lua script (atomic, 1000 entries a call).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self, cast
from urllib.parse import SplitResult, parse_qsl, urlsplit

from eventbus import RedactingFilter, redact
from eventbus.errors import ConfigurationError, MissingDependencyError, TransportError
from eventbus.transports import Backoff, Capabilities, Message, url_options

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as error:  # pragma: no cover - the extra is installed in development
    raise MissingDependencyError(
        'eventbus_contrib.redis needs redis-py: pip install "eventbus[redis]"'
    ) from error

if TYPE_CHECKING:
    from eventbus.typing import Received

__all__ = ["RedisStreamsTransport"]

logger = logging.getLogger("eventbus.redis")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core

_TOPIC: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_QUERY_OPTIONS: Final = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "max_connections",
        "client_name",
    }
)
_TLS_QUERY_OPTIONS: Final = frozenset(
    {"ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"}
)
_DATABASE_PATH: Final = re.compile(r"(?:/\d+)?/?")
_DEFAULTS: Final[dict[str, Any]] = {
    "prefix": "eventbus:",
    "claim_idle": 60.0,
    "block": 1.0,
    "batch": 100,
    "maxlen": None,
}

_BACKOFF: Final = Backoff(first=0.1, cap=5.0, jitter=0.5)
"""A consumer's waits between attempts to read from a Redis it lost."""
_ACK_BACKOFF: Final = Backoff(first=0.05, cap=1.0, factor=4.0)
"""The waits between attempts at one XACK (0.05 s, then 0.2 s)."""
_TRIM_EVERY: Final = 1.0
"""Seconds between two automatic trims of one stream: the check reads every group."""
_TRIM_SCAN: Final = 1000
"""At most this many entries are trimmed per trim call (the script reads them to find the
cut), so one call never blocks Redis long; later calls catch up."""
_ACK_ATTEMPTS: Final = 3
"""XACK is idempotent, so a lost reply is retried a little before the ack fails."""

# Trims one stream (KEYS[1]) towards ARGV[1] entries, scanning at most ARGV[2] entries,
# without removing an entry some group still needs: the cut never passes the oldest
# pending entry of any group, nor a group's last-delivered id (what follows it is unread).
# A stream without groups is left alone: the first group to come reads it from id 0.
# Atomic, so a group created (at 0) or an entry delivered meanwhile cannot slip past it.
_TRIM_SCRIPT: Final = """
local stream = KEYS[1]
local excess = redis.call('XLEN', stream) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', stream)
if #groups == 0 then return 0 end
if excess > tonumber(ARGV[2]) then excess = tonumber(ARGV[2]) end
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess + 1)
local cut = head[#head][1]
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function before(a, b)
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local floor = info['last-delivered-id']
  if tonumber(info['pending']) > 0 then
    floor = redis.call('XPENDING', stream, info['name'])[2]
  end
  if before(floor, cut) then cut = floor end
end
return redis.call('XTRIM', stream, 'MINID', cut)
"""


def _positive(name: str, value: object, *, integer: bool = False) -> float:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        kind = "a positive integer" if integer else "a positive number of seconds"
        raise ConfigurationError(
            f"RedisStreamsTransport option {name} must be {kind}, got {value!r}"
        )
    if not integer and not math.isfinite(value):
        raise ConfigurationError(
            f"RedisStreamsTransport option {name} must be finite, got {value!r}"
        )
    return value


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        raise ConfigurationError(
            f"a topic is an event's wire name, dot-separated words of [A-Za-z0-9_-] "
            f"(like 'orders.placed'), got {topic!r}"
        )
    return topic


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Received:
    """An entry a subscription yielded: ``ack`` is XACK, ``nack`` hands it back."""

    __slots__ = (
        "_entry",
        "_stream",
        "_subscription",
        "body",
        "delivery_count",
        "message_id",
        "topic",
    )

    def __init__(
        self,
        subscription: _Subscription,
        stream: bytes,
        entry: bytes,
        body: bytes,
        delivery_count: int,
    ) -> None:
        self._subscription = subscription
        self._stream = stream
        self._entry = entry
        self.topic = subscription.topics[stream]
        self.body = body
        self.message_id = entry.decode()
        self.delivery_count = delivery_count

    def __repr__(self) -> str:
        return f"<redis entry {self.message_id} on {self.topic!r} (delivery {self.delivery_count})>"

    async def ack(self) -> None:
        await self._subscription.settle(self, requeue=False)

    async def nack(self, *, requeue: bool = True) -> None:
        await self._subscription.settle(self, requeue=requeue)

    async def touch(self) -> None:
        """Still being handled: reset the entry's idle time, so no other consumer's
        XAUTOCLAIM takes it over while a slow handler runs."""
        await self._subscription.touch(self)


class _Subscription:
    """One consumer of one group over several streams: what it reads, holds and settles.

    ``ready`` holds entries read from Redis and not yielded yet; ``held`` every entry this
    consumer owns and has not settled (ready or yielded), so a re-read of its own pending
    entries or a takeover of its own stale ones never yields one twice.
    """

    def __init__(self, transport: RedisStreamsTransport, topics: Sequence[str], group: str) -> None:
        self.transport = transport
        self.group = group
        self.name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.topics = {(transport.prefix + t).encode(): t for t in topics}
        self.ready: list[_Received] = []
        self.held: set[tuple[bytes, bytes]] = set()
        self.groups_made = False
        self.own: dict[bytes, bytes] = {}
        """Streams whose own pending entries are still to be re-read, from which id."""
        self.claims: dict[bytes, bytes] = {}
        """Streams whose XAUTOCLAIM scan is under way, and its cursor."""
        self.next_claim = 0.0

    def reconnected(self) -> None:
        """After an error: make the groups again (the server may have restarted empty) and
        re-read this consumer's pending entries (a reply with entries may have been lost)."""
        self.groups_made = False
        self.own = dict.fromkeys(self.topics, b"0")

    async def fill(self) -> None:
        """Put the next entries in ``ready``: own pending ones first, then stale ones of
        other consumers when a scan is due, then new ones (blocking up to ``block``)."""
        client = self.transport._client_now()
        if not self.groups_made:
            await self._make_groups(client)
        if self.own and await self._read_own(client):
            return
        if self.claims or time.monotonic() >= self.next_claim:
            if not self.claims:
                self.claims = dict.fromkeys(self.topics, b"0-0")
            if await self._claim(client):
                return
        await self._read_new(client)

    async def _make_groups(self, client: aioredis.Redis) -> None:
        for stream in self.topics:
            try:
                await client.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
        self.groups_made = True

    async def _read_own(self, client: aioredis.Redis) -> bool:
        reply = await client.xreadgroup(
            self.group, self.name, cast("Any", self.own), count=self.transport.batch
        )
        found: list[tuple[bytes, bytes, bytes]] = []
        gone: list[tuple[bytes, bytes]] = []
        for stream, entries in _streams(reply):
            if not entries:
                del self.own[stream]
                continue
            self.own[stream] = entries[-1][0]
            for entry, fields in entries:
                if not fields:  # the entry was deleted while it was pending
                    gone.append((stream, entry))
                elif (stream, entry) not in self.held:
                    found.append((stream, entry, fields.get(b"body", b"")))
        await self._forget(client, gone, acknowledge=True)
        await self._deliver(client, found)
        return bool(found)

    async def _claim(self, client: aioredis.Redis) -> bool:
        pipe = client.pipeline(transaction=False)
        streams = list(self.claims)
        for stream in streams:
            pipe.xautoclaim(
                stream,
                self.group,
                self.name,
                int(self.transport.claim_idle * 1000),
                start_id=self.claims[stream],
                count=self.transport.batch,
            )
        replies = await pipe.execute()
        found: list[tuple[bytes, bytes, bytes]] = []
        gone: list[tuple[bytes, bytes]] = []
        for stream, reply in zip(streams, replies, strict=True):
            cursor, entries = reply[0], reply[1]
            for entry, fields in entries:
                if entry is None:  # Redis 6.2 answers a deleted entry with a nil
                    continue
                if (stream, entry) not in self.held:
                    found.append((stream, entry, fields.get(b"body", b"")))
            gone.extend((stream, entry) for entry in (reply[2] if len(reply) > 2 else ()))
            if cursor in (b"0-0", "0-0"):
                del self.claims[stream]
            else:
                self.claims[stream] = cursor
        if not self.claims:
            self.next_claim = time.monotonic() + self.transport.claim_idle / 2
        await self._forget(client, gone, acknowledge=False)
        await self._deliver(client, found)
        return bool(found)

    async def _read_new(self, client: aioredis.Redis) -> None:
        streams = dict.fromkeys(self.topics, b">")
        reply = await client.xreadgroup(
            self.group,
            self.name,
            cast("Any", streams),
            count=self.transport.batch,
            block=max(1, int(self.transport.block * 1000)),
        )
        for stream, entries in _streams(reply):
            for entry, fields in entries:
                self._hold(stream, entry, fields.get(b"body", b""), 1)

    async def _deliver(
        self, client: aioredis.Redis, found: list[tuple[bytes, bytes, bytes]]
    ) -> None:
        """Hold entries read again, with the group's delivery count of each; an entry that
        is no longer pending (its old consumer acked it meanwhile) is dropped."""
        if not found:
            return
        pipe = client.pipeline(transaction=False)
        for stream, entry, _ in found:
            pipe.xpending_range(stream, self.group, entry, entry, 1)
        counts = await pipe.execute()
        for (stream, entry, body), pending in zip(found, counts, strict=True):
            if pending:
                self._hold(stream, entry, body, int(pending[0]["times_delivered"]))

    def _hold(self, stream: bytes, entry: bytes, body: bytes, count: int) -> None:
        self.held.add((stream, entry))
        self.ready.append(_Received(self, stream, entry, body, count))

    async def _forget(
        self, client: aioredis.Redis, gone: list[tuple[bytes, bytes]], *, acknowledge: bool
    ) -> None:
        """Entries deleted from their stream while pending: nothing is left to deliver."""
        for stream, entry in gone:
            logger.warning(
                "entry %s of stream %s was deleted before group %r acknowledged it (XDEL or "
                "a trim outside eventbus?); it cannot be delivered and leaves the pending list",
                _text(entry),
                _text(stream),
                self.group,
            )
            if acknowledge:
                await client.xack(stream, self.group, entry)

    async def release(self) -> None:
        """On close, hand back the entries read but never yielded: with the delivery not
        counted and an idle time past ``claim_idle``, so the group's next scan takes them
        over at once instead of after ``claim_idle``. Best effort: if it fails, they are
        taken over after ``claim_idle`` anyway."""
        unyielded, self.ready = self.ready, []
        if not unyielded or self.transport.closed:
            return
        idle = int(self.transport.claim_idle * 1000) + 1
        with contextlib.suppress(RedisError, OSError, TimeoutError, TransportError):
            async with asyncio.timeout(2.0):
                pipe = self.transport._client_now().pipeline(transaction=False)
                for received in unyielded:
                    pipe.xclaim(
                        received._stream,
                        self.group,
                        self.name,
                        0,
                        [received._entry],
                        idle=idle,
                        retrycount=received.delivery_count - 1,
                        justid=True,
                    )
                await pipe.execute()
        for received in unyielded:
            self.held.discard((received._stream, received._entry))

    async def settle(self, received: _Received, *, requeue: bool) -> None:
        key = (received._stream, received._entry)
        if key not in self.held:
            return  # settled already
        client = self.transport._client_now()
        if requeue:
            await self._requeue(client, received)
            return
        for attempt in range(_ACK_ATTEMPTS):
            try:
                await client.xack(received._stream, self.group, received._entry)
                break
            except RedisError as error:
                if attempt + 1 == _ACK_ATTEMPTS:
                    # no longer held, and its stream's own pending entries are read
                    # again: it is yielded again (a duplicate) rather than never
                    self.held.discard(key)
                    self.own.setdefault(received._stream, b"0")
                    raise TransportError(
                        f"XACK of {received!r} failed ({redact(str(error))}); it stays pending "
                        "and is delivered again"
                    ) from error
                await asyncio.sleep(_ACK_BACKOFF.delay(attempt))
        self.held.discard(key)

    async def touch(self, received: _Received) -> None:
        """XCLAIM JUSTID to this very consumer: resets the idle time, counts no delivery."""
        if (received._stream, received._entry) not in self.held:
            return
        try:
            await self.transport._client_now().xclaim(
                received._stream, self.group, self.name, 0, [received._entry], justid=True
            )
        except RedisError as error:
            raise TransportError(f"cannot touch {received!r}: {redact(str(error))}") from error

    async def _requeue(self, client: aioredis.Redis, received: _Received) -> None:
        """XCLAIM to this consumer, min-idle 0: the group counts a delivery and the entry
        comes back first, in stream order among the entries not yielded yet."""
        key = (received._stream, received._entry)
        try:
            claimed = await client.xclaim(
                received._stream, self.group, self.name, 0, [received._entry]
            )
        except RedisError as error:
            self.own.setdefault(received._stream, b"0")
            self.held.discard(key)  # so the re-read of own pending entries yields it again
            raise TransportError(
                f"nack of {received!r} failed ({redact(str(error))}); it stays pending and is "
                "delivered again"
            ) from error
        self.held.discard(key)
        entries = [
            (entry, fields)
            for entry, fields in cast("list[Any]", claimed)
            if entry is not None and fields
        ]
        if not entries:
            return  # acknowledged or deleted meanwhile
        again = _Received(
            self, received._stream, received._entry, received.body, received.delivery_count + 1
        )
        self.held.add(key)
        position = 0
        while position < len(self.ready) and not (
            self.ready[position]._stream == received._stream
            and _entry_id(self.ready[position]._entry) > _entry_id(received._entry)
        ):
            position += 1
        # before the first later entry of its stream, or first of all if none
        if position == len(self.ready):
            position = 0
        self.ready.insert(position, again)


def _entry_id(entry: bytes) -> tuple[int, int]:
    ms, _, seq = entry.partition(b"-")
    return int(ms), int(seq or 0)


def _streams(reply: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREADGROUP's reply as (stream, entries) pairs, in RESP2 (a list) or RESP3 (a dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(stream, entries) for stream, entries in reply.items()]
    return [(stream, entries) for stream, entries in reply]


def _redis_url(url: object) -> SplitResult:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme.lower() not in ("redis", "rediss"):
        raise ConfigurationError(
            f"RedisStreamsTransport takes redis:// or rediss:// URLs, got {redact(repr(url))}"
        )
    return parts


def _client_options(parts: SplitResult) -> frozenset[str]:
    """The query parameters redis-py reads (and eventbus lets through) for this URL."""
    return _QUERY_OPTIONS | (_TLS_QUERY_OPTIONS if parts.scheme.lower() == "rediss" else set())


class RedisStreamsTransport:
    """``redis://`` / ``rediss://``: a stream per topic, a consumer group per group."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True,  # as far as the server's AOF/RDB settings go: see the module doc
        ordered_per_key=True,
        consumer_groups=True,
        counts_deliveries=True,
        new_groups_read_history=True,
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "eventbus:",
        claim_idle: float = 60.0,
        block: float = 1.0,
        batch: int = 100,
        maxlen: int | None = None,
    ) -> None:
        parts = _redis_url(url)
        if not isinstance(prefix, str):
            raise ConfigurationError(
                f"RedisStreamsTransport prefix must be a string, got {prefix!r}"
            )
        self.prefix = prefix
        self.claim_idle = _positive("claim_idle", claim_idle)
        self.block = _positive("block", block)
        self.batch = int(_positive("batch", batch, integer=True))
        self.maxlen = None if maxlen is None else int(_positive("maxlen", maxlen, integer=True))
        allowed = _client_options(parts)
        unknown = sorted({name for name, _ in parse_qsl(parts.query)} - allowed)
        if unknown:
            # from_url takes the transport's own options from the query; this does not.
            raise ConfigurationError(
                f"the Redis URL {redact(url)!r} has options redis-py does not take: "
                f"{', '.join(unknown)}; it takes {', '.join(sorted(allowed))} (this "
                f"constructor takes {', '.join(_DEFAULTS)} as keyword arguments, "
                "RedisStreamsTransport.from_url from the query too)"
            )
        if not _DATABASE_PATH.fullmatch(parts.path):
            # redis-py reads a path that is not a number as database 0, without a word.
            raise ConfigurationError(
                f"the Redis URL {redact(url)!r} has the path {parts.path!r}: the path is "
                "the database number (redis://host:6379/0); leave it out for database 0"
            )
        try:
            parsed = parse_url(url)
            _ = parts.port
        except ValueError as error:
            raise ConfigurationError(
                f"the Redis URL {redact(url)!r} is not valid: {error}"
            ) from None
        timeout = cast("float | None", parsed.get("socket_timeout"))
        if timeout is not None and timeout <= self.block:
            raise ConfigurationError(
                f"socket_timeout={timeout} in the Redis URL must exceed block={self.block} s, "
                "or every blocking read times out"
            )
        self._url = url
        self._client: aioredis.Redis | None = None
        self._closed = False
        self._script: Any = None
        self._trimmed: dict[str, float] = {}

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        """``url`` may carry the transport's own options in its query string too
        (``redis://host:6379/0?prefix=shop:&claim_idle=30``); keyword arguments win."""
        rest, chosen = url_options(
            url,
            _DEFAULTS,
            options,
            client_options=_client_options(_redis_url(url)),
            transport="RedisStreamsTransport",
            client="redis-py",
        )
        return cls(rest, **chosen)

    def __repr__(self) -> str:
        return f"<RedisStreamsTransport {redact(self._url)} prefix={self.prefix!r}>"

    @property
    def redelivery_timeout(self) -> float:
        """Seconds an unacknowledged entry waits before another consumer may take it."""
        return self.claim_idle

    @property
    def closed(self) -> bool:
        return self._closed

    def _client_now(self) -> aioredis.Redis:
        if self._closed:
            raise TransportError("this RedisStreamsTransport is closed; make a new one")
        if self._client is None:
            # retries off: a retried XADD whose reply was lost is stored twice; callers
            # (the relay, the subscription loop) retry with their own backoff instead
            self._client = aioredis.Redis.from_url(
                self._url,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=5.0,
                socket_timeout=self.block + 10.0,
                decode_responses=False,
            )
        return self._client

    async def connect(self) -> None:
        client = self._client_now()
        try:
            await client.ping()
        except RedisError as error:
            raise TransportError(
                f"cannot reach Redis at {redact(self._url)}: {redact(str(error))}"
            ) from error

    async def publish(self, topic: str, /, *messages: Message) -> None:
        client = self._client_now()
        _check_topic(topic)
        for message in messages:
            if message.topic != topic:
                raise TransportError(
                    f"publish({topic!r}) was given a message of topic {message.topic!r}; "
                    "publish each topic's messages on their own"
                )
        if not messages:
            return
        stream = self.prefix + topic
        pipe = client.pipeline(transaction=False)
        for message in messages:
            fields: dict[str, bytes | str] = {"body": message.body, "id": str(message.id)}
            if message.key is not None:
                fields["key"] = message.key
            pipe.xadd(stream, cast("Any", fields))
        if self.maxlen is not None:
            pipe.xlen(stream)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except RedisError as error:
            raise TransportError(
                f"publishing {len(messages)} messages to {stream!r} failed, unconfirmed: "
                f"{redact(str(error))}"
            ) from error
        failed = [reply for reply in replies if isinstance(reply, Exception)]
        if failed:
            hint = (
                f"; the key {stream!r} holds something that is not a stream: choose another prefix"
                if "WRONGTYPE" in str(failed[0])
                else ""
            )
            raise TransportError(
                f"Redis refused {len(failed)} of {len(messages)} XADDs to {stream!r} "
                f"({redact(str(failed[0]))}){hint}; the others were stored"
            ) from failed[0]
        if self.maxlen is not None and int(replies[-1]) > self.maxlen + max(1, self.maxlen // 10):
            now = time.monotonic()
            if now - self._trimmed.get(topic, -math.inf) >= _TRIM_EVERY:
                self._trimmed[topic] = now
                try:
                    await self.trim(topic)
                except TransportError as error:  # the messages are stored: publish succeeded
                    logger.warning("trimming %r failed, trying again later: %s", stream, error)

    async def trim(self, topic: str, maxlen: int | None = None) -> int:
        """Trim ``topic``'s stream towards ``maxlen`` entries (default: the option), never
        removing an entry a group has not acknowledged; returns how many were removed."""
        _check_topic(topic)
        limit = maxlen if maxlen is not None else self.maxlen
        if limit is None:
            raise ConfigurationError("trim() needs maxlen=..., here or in the transport's options")
        limit = int(_positive("maxlen", limit, integer=True))
        client = self._client_now()
        if self._script is None:
            self._script = client.register_script(_TRIM_SCRIPT)
        try:
            return int(await self._script(keys=[self.prefix + topic], args=[limit, _TRIM_SCAN]))
        except RedisError as error:
            raise TransportError(f"trimming {topic!r} failed: {redact(str(error))}") from error

    def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]:
        return self._consume(topics, group)

    async def _consume(self, topics: Sequence[str], group: str) -> AsyncIterator[Received]:
        if isinstance(topics, str) or not isinstance(topics, Sequence) or not topics:
            raise ConfigurationError(
                f"subscribe() takes a non-empty sequence of topics, like ['orders.placed'], "
                f"got {topics!r}"
            )
        for topic in topics:
            _check_topic(topic)
        if not isinstance(group, str) or not group.strip():
            raise ConfigurationError(f"a consumer group is a non-empty name, got {group!r}")
        subscription = _Subscription(self, list(dict.fromkeys(topics)), group)
        failures = 0
        try:
            while not self._closed:
                if not subscription.ready:
                    try:
                        await subscription.fill()
                    except (RedisError, OSError) as error:
                        if self.closed:
                            return
                        subscription.reconnected()
                        pause = _BACKOFF.delay(failures)
                        logger.warning(
                            "consumer %s of group %r cannot read from Redis at %s (%s); "
                            "trying again in %.1f s",
                            subscription.name,
                            group,
                            redact(self._url),
                            redact(str(error)),
                            pause,
                        )
                        failures += 1
                        await asyncio.sleep(pause)
                        continue
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        # seen with redis-py 8.1: a cancel that lands in a blocked XREADGROUP
                        # can be lost and the read returns empty; honour it here
                        raise asyncio.CancelledError
                    if failures:
                        logger.warning(
                            "consumer %s of group %r reads from Redis again",
                            subscription.name,
                            group,
                        )
                        failures = 0
                while subscription.ready and not self._closed:
                    yield subscription.ready.pop(0)
        finally:
            await subscription.release()

    async def aclose(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
