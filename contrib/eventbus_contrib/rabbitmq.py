"""The RabbitMQ transport, on aio-pika: ``amqp://`` and ``amqps://`` (TLS).

What a user needs (the URL, the options, durability, redelivery, order, limits) is in
README.md, "Going distributed > RabbitMQ". The design, for maintainers:

- A topic is a routing key on one durable topic exchange; a group is one durable queue,
  bound to every topic its subscriptions asked for (bindings only grow). A consumer
  handed a topic it did not ask for requeues it, after a second, for one that did.
- aio-pika's defaults are not safe (PITFALLS.md): messages are persistent (delivery mode
  2), published ``mandatory`` with returns raised, and a batch's publisher confirms are
  awaited together (the broker batches its fsyncs). Anything but a confirm is unsent.
- Classic queues only say whether a message was delivered before (a count of 1 or 2), so
  their ``capabilities.counts_deliveries`` is False; ``quorum=True`` gives a
  ``RabbitMQQuorumTransport``, which reads ``x-delivery-count``. ``delivery_limit`` is
  the broker's backstop, dead-lettering to ``<queue>.dead-letter``.
- ``connect_robust`` restores the topology after a cut; an ``ack`` on a channel that is
  gone raises ``TransportError`` (the broker redelivers). aio-pika >= 10 and aiormq >=
  7.2.4: older ones leave a pending confirm waiting at a cut, or leak sockets.
- A message over ``max_message_size`` fails alone: the rest of its batch is published and
  ``MessageTooLargeError.rejected`` names it; later batches are split before sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, NoReturn, Self, cast
from urllib.parse import parse_qsl, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
    AbstractRobustQueue,
)
from pamqp.commands import Basic

from eventbus import RedactingFilter, redact
from eventbus.errors import ConfigurationError, MessageRejectedError, TransportError
from eventbus.transports import Backoff, Capabilities, Message, url_options

__all__ = ["MessageTooLargeError", "RabbitMQQuorumTransport", "RabbitMQTransport"]

logger = logging.getLogger("eventbus.rabbitmq")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core

_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_MAX_NAME_BYTES = 255
_KEY_HEADER = "eventbus-key"
_MAX_SIZE = re.compile(r"larger than configured max size (\d+)")
_PERSISTENT = 2
_BOUNCE_DELAY = 1.0
"""Seconds before a message of a topic this consumer did not ask for goes back to the
group: without the pause, a lone consumer and the broker would pass it back and forth."""
_SETUP_BACKOFF = Backoff(first=0.2, cap=5.0)
_CONNECT_TIMEOUT = 10.0
_CHANNEL_REOPEN = 5.0
_OWN_QUERY = frozenset({"heartbeat", "reconnect_interval", "fail_fast"})
_DEFAULTS: dict[str, Any] = {
    "exchange": "eventbus",
    "queue_prefix": None,
    "prefetch": 100,
    "heartbeat": 10,
    "quorum": False,
    "delivery_limit": None,
    "single_active_consumer": False,
    "confirm_timeout": 30.0,
    "reconnect_interval": 1.0,
}

_CLIENT_QUERY = frozenset(
    {
        # aiormq: TLS, the connection's timeout and name, the auth mechanism
        "cafile",
        "capath",
        "cadata",
        "keyfile",
        "certfile",
        "no_verify_ssl",
        "timeout",
        "name",
        "auth",
        # aio-pika: connecting to several addresses
        "interleave",
        "happy_eyeballs_delay",
    }
)
"""The query parameters aio-pika (10.x) and aiormq read; eventbus sets ``heartbeat``,
``reconnect_interval`` and ``fail_fast`` itself."""


def _describe(error: BaseException) -> str:
    """What went wrong, for an exception text or a log line: never a password."""
    text = str(error) or type(error).__name__
    return redact(f"{type(error).__name__}: {text}")


def _check_name(what: str, name: object) -> str:
    if (
        not isinstance(name, str)
        or not _NAME.fullmatch(name)
        or len(name.encode()) > _MAX_NAME_BYTES
    ):
        raise ConfigurationError(
            f"a RabbitMQ {what} is words of [A-Za-z0-9_-] separated by dots, at most "
            f"{_MAX_NAME_BYTES} bytes, got {name!r}"
        )
    return name


def _positive(name: str, value: object, *, integer: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "integer" if integer else "number"
        raise ConfigurationError(
            f"RabbitMQTransport option {name} must be a positive {kind}, got {value!r}"
        )
    return value


class MessageTooLargeError(MessageRejectedError):
    """Messages of a batch were over the broker's ``max_message_size``; the others of the
    batch were published (and confirmed). ``rejected`` holds the ids of those over it."""

    def __init__(self, text: str, *, rejected: tuple[uuid.UUID, ...]) -> None:
        super().__init__(text)
        self.rejected = rejected


class _OversizedError(Exception):
    """The broker closed the publishing channel over a message above its size limit."""

    def __init__(self, text: str, limit: int | None) -> None:
        super().__init__(text)
        self.limit = limit


class _Received:
    """One delivery; settles on the channel it came on (delivery tags are per channel)."""

    __slots__ = ("_incoming", "_settled", "body", "delivery_count", "message_id", "topic")

    def __init__(self, incoming: AbstractIncomingMessage, delivery_count: int) -> None:
        self._incoming = incoming
        self._settled = False
        self.topic: str = incoming.routing_key or ""
        self.body: bytes = incoming.body
        self.message_id = str(incoming.delivery_tag)
        self.delivery_count = delivery_count

    def __repr__(self) -> str:
        return f"<rabbitmq message {self.message_id} on {self.topic!r}>"

    async def ack(self) -> None:
        await self._settle("ack", requeue=False)

    async def nack(self, *, requeue: bool = True) -> None:
        await self._settle("nack", requeue=requeue)

    async def _settle(self, how: str, *, requeue: bool) -> None:
        if self._settled:
            return  # settling twice is a no-op, as on every transport
        self._settled = True
        try:
            if how == "ack":
                await self._incoming.ack()
            else:
                await self._incoming.nack(requeue=requeue)
        except Exception as error:  # aiormq rejects a dead channel's futures with bare Exception
            failure = _describe(error)
        else:
            return
        raise TransportError(
            f"could not {how} {self!r}: the channel it came on is gone ({failure}); the "
            "broker delivers it again, to this group"
        )


class _Subscription:
    """One consumer: its channel, its group's queue, and the deliveries it was handed."""

    def __init__(self, transport: RabbitMQTransport, topics: tuple[str, ...], group: str) -> None:
        self._transport = transport
        self.topics = topics
        self.group = group
        self.queue_name = transport._queue_name(group)
        self.inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
        self._channel: AbstractRobustChannel | None = None
        self._bouncing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Declare and consume, retrying with backoff until the broker answers."""
        attempt = 0
        while True:
            try:
                await self._setup()
            except TransportError as error:
                if self._transport._closed:
                    raise
                delay = _SETUP_BACKOFF.delay(attempt)
                attempt += 1
                logger.warning(
                    "RabbitMQ subscription of group %r (%s) cannot start: %s; retrying in %g s",
                    self.group,
                    self._transport._safe_url,
                    error,
                    delay,
                )
                await self._discard_channel()
                await asyncio.sleep(delay)
            else:
                if attempt:
                    logger.warning(
                        "RabbitMQ subscription of group %r started after %d attempts",
                        self.group,
                        attempt + 1,
                    )
                return

    async def _setup(self) -> None:
        connection = await self._transport._ensure_connection()
        failure: str | None = None
        refused: str | None = None
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                channel = self._channel = await connection.channel(publisher_confirms=False)
                channel.close_callbacks.add(self._on_channel_lost)
                channel.reopen_callbacks.add(self._on_channel_back)
                await channel.set_qos(prefetch_count=self._transport._prefetch)
                queue = await self._transport._declare_group(channel, self.queue_name, self.topics)
                # Robust: after a reconnect aio-pika consumes again with this callback.
                await queue.consume(self._on_message)
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            refused = _describe(error)
        except Exception as error:  # aiormq fails a dead channel's calls with bare Exception
            failure = _describe(error)
        if refused is not None:
            await self._discard_channel()
            raise self._transport._refusal(self.queue_name, refused)
        if failure is not None:
            raise TransportError(f"RabbitMQ subscription setup failed: {failure}")

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        await self.inbox.put(incoming)

    def _on_channel_lost(self, _channel: object, error: BaseException | None) -> None:
        if self._transport._closed:
            return
        logger.warning(
            "RabbitMQ subscription of group %r lost its channel (%s); its unacknowledged "
            "messages go back to the queue; reconnecting to %s",
            self.group,
            _describe(error) if error is not None else "closed",
            self._transport._safe_url,
        )

    def _on_channel_back(self, _channel: object) -> None:
        logger.warning("RabbitMQ subscription of group %r is consuming again", self.group)

    def bounce(self, incoming: AbstractIncomingMessage) -> None:
        """Hand a message of a topic this consumer did not ask for back to its group."""
        logger.warning(
            "RabbitMQ queue %r gave a consumer of %s a message of %r: consumers of one "
            "group should subscribe the same topics; handing it back to the group",
            self.queue_name,
            ", ".join(self.topics),
            incoming.routing_key,
        )

        async def later() -> None:
            await asyncio.sleep(_BOUNCE_DELAY)
            with contextlib.suppress(Exception):  # its channel died: it is requeued anyway
                await incoming.nack(requeue=True)

        task = asyncio.create_task(later())
        self._bouncing.add(task)
        task.add_done_callback(self._bouncing.discard)

    async def stop(self) -> None:
        """Stop consuming; the broker requeues what was not acknowledged."""
        for task in list(self._bouncing):
            task.cancel()
        await self._discard_channel()
        # Wake anything still waiting on this inbox; its deliveries died with the channel.
        self.inbox.put_nowait(None)

    async def _discard_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is None:
            return
        channel.close_callbacks.discard(self._on_channel_lost)
        channel.reopen_callbacks.discard(self._on_channel_back)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                await channel.close()


class RabbitMQTransport:
    """``amqp://`` and ``amqps://``: a durable topic exchange, a durable queue per group."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, ordered_per_key=True, consumer_groups=True, counts_deliveries=False
    )

    def __init__(
        self,
        url: str,
        *,
        exchange: str = "eventbus",
        queue_prefix: str | None = None,
        prefetch: int = 100,
        heartbeat: int = 10,
        quorum: bool = False,
        delivery_limit: int | None = None,
        single_active_consumer: bool = False,
        confirm_timeout: float = 30.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme.lower() not in {"amqp", "amqps"} or not parts.hostname:
            raise ConfigurationError(
                "RabbitMQTransport takes amqp://user:password@host:5672/vhost (or amqps://) "
                f"URLs, got {redact(repr(url))}"
            )
        given = {key for key, _ in parse_qsl(parts.query)} & _OWN_QUERY
        if given:
            raise ConfigurationError(
                f"pass {', '.join(sorted(given))} as a RabbitMQTransport option, not in the "
                f"URL {redact(url)!r}"
            )
        self._url = url
        self._safe_url = redact(url)
        self.exchange = _check_name("exchange name", exchange)
        self._queue_prefix = (
            None if queue_prefix is None else _check_name("queue_prefix", queue_prefix)
        )
        self._prefetch: int = _positive("prefetch", prefetch, integer=True)
        self._heartbeat: int = _positive("heartbeat", heartbeat, integer=True)
        self._confirm_timeout: float = _positive("confirm_timeout", confirm_timeout)
        self._reconnect_interval: float = _positive("reconnect_interval", reconnect_interval)
        self._quorum = bool(quorum)
        if delivery_limit is not None:
            if not self._quorum:
                raise ConfigurationError(
                    "delivery_limit is the limit of quorum queues: pass quorum=True with it"
                )
            _positive("delivery_limit", delivery_limit, integer=True)
        self._delivery_limit = delivery_limit
        self._single_active = bool(single_active_consumer)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._connect_lock = asyncio.Lock()
        self._subscriptions: set[_Subscription] = set()
        self._max_message_size: int | None = None
        """The broker's limit, once a refusal has named it: later batches are split."""
        self._closed = False

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        # The transport's own options may ride in the query string too
        # (amqp://host/?exchange=shop&quorum=true); keyword arguments win. Other query
        # parameters must be aio-pika's: it ignores names it does not know, so a misspelt
        # ?exchange= would publish to the default exchange without a word.
        defaults = {**_DEFAULTS, "quorum": issubclass(cls, RabbitMQQuorumTransport)}
        url, options = url_options(
            url,
            defaults,
            options,
            client_options=_CLIENT_QUERY,
            transport="RabbitMQTransport",
            client="aio-pika",
        )
        # Capabilities are per class (a ClassVar), so quorum queues, which count
        # deliveries, get a class of their own.
        target: type[RabbitMQTransport] = (
            RabbitMQQuorumTransport if options["quorum"] else RabbitMQTransport
        )
        if issubclass(cls, target):
            target = cls
        return cast("Self", target(url, **options))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._safe_url} exchange={self.exchange!r}>"

    __str__ = __repr__

    # -- what the broker sees ------------------------------------------------------------

    def _queue_name(self, group: str) -> str:
        name = f"{self._queue_prefix or self.exchange}.{_check_name('consumer group', group)}"
        if len(name.encode()) > _MAX_NAME_BYTES:
            raise ConfigurationError(
                f"the queue name {name!r} is longer than {_MAX_NAME_BYTES} bytes: use a "
                "shorter group or queue_prefix"
            )
        return name

    def _queue_arguments(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self._quorum:
            arguments["x-queue-type"] = "quorum"
        if self._single_active:
            arguments["x-single-active-consumer"] = True
        if self._delivery_limit is not None:
            arguments["x-delivery-limit"] = self._delivery_limit
            # Past the limit the broker would drop the message: route it to a queue instead.
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = f"{queue}.dead-letter"
        return arguments

    async def _declare_exchange(self, channel: AbstractRobustChannel) -> AbstractRobustExchange:
        return await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )

    async def _declare_dead_letter_queue(self, channel: AbstractRobustChannel, queue: str) -> None:
        if self._delivery_limit is not None:
            await channel.declare_queue(
                f"{queue}.dead-letter", durable=True, arguments={"x-queue-type": "quorum"}
            )

    async def _declare_group(
        self, channel: AbstractRobustChannel, queue_name: str, topics: Sequence[str]
    ) -> AbstractRobustQueue:
        """The exchange, the group's queue (and its dead-letter queue) and the bindings."""
        exchange = await self._declare_exchange(channel)
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=self._queue_arguments(queue_name)
        )
        await self._declare_dead_letter_queue(channel, queue_name)
        for topic in topics:
            await queue.bind(exchange, routing_key=topic)
        return queue

    def _refusal(self, queue_name: str, refused: str) -> ConfigurationError:
        return ConfigurationError(
            f"RabbitMQ refused the queue {queue_name!r} or the exchange {self.exchange!r} "
            f"({refused}): they exist with other arguments (quorum, single_active_consumer, "
            "delivery_limit, or another exchange type). Use another queue_prefix (or "
            "exchange), or delete the old queue once it is drained"
        )

    async def declare(self, topics: Sequence[str], /, *, group: str) -> None:
        """Make ``group``'s queue and its bindings to ``topics`` exist, without consuming.

        From then on the broker keeps what is published to those topics for the group,
        while a message published before any queue is bound is returned unroutable. A
        bus's worker calls this before its relay sends anything (``Transport`` lists it
        as optional)."""
        self._check_open()
        if isinstance(topics, str) or not topics:
            raise ConfigurationError(f"declare takes a sequence of topics, got {topics!r}")
        wanted = tuple(dict.fromkeys(_check_name("topic", topic) for topic in topics))
        queue_name = self._queue_name(group)
        connection = await self._ensure_connection()
        failure: str | None = None
        refused: str | None = None
        channel: AbstractRobustChannel | None = None
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                channel = await connection.channel(publisher_confirms=False)
                await self._declare_group(channel, queue_name, wanted)
        except aiormq.exceptions.ChannelPreconditionFailed as error:
            refused = _describe(error)
        except Exception as error:  # aiormq fails a dead channel's calls with bare Exception
            failure = _describe(error)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_CONNECT_TIMEOUT):
                        await channel.close()
        if refused is not None:
            raise self._refusal(queue_name, refused)
        if failure is not None:
            raise TransportError(f"RabbitMQ could not declare the queue {queue_name!r}: {failure}")

    # -- connection ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"this {type(self).__name__} is closed; make a new one")

    async def connect(self) -> None:
        await self._ensure_connection()

    async def _ensure_connection(self) -> AbstractRobustConnection:
        """The robust connection, opened (with the publishing channel) on first use."""
        self._check_open()
        async with self._connect_lock:
            self._check_open()
            if self._connection is not None:
                return self._connection
            failure: str | None = None
            refused: str | None = None
            connection: AbstractRobustConnection | None = None
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT):
                    connection = await aio_pika.connect_robust(
                        self._url,
                        heartbeat=self._heartbeat,
                        reconnect_interval=self._reconnect_interval,
                        fail_fast=True,
                    )
                    publisher = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    await self._declare_exchange(publisher)
            except aiormq.exceptions.ChannelPreconditionFailed as error:
                refused = _describe(error)
            except Exception as error:  # every failure to connect is reported the same way
                failure = _describe(error)
            if failure is None and refused is None and connection is not None:
                self._connection, self._publisher = connection, publisher
                return connection
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        # Raised outside the except blocks: the library's exception (which may hold the
        # URL) is not chained to ours.
        if refused is not None:
            raise ConfigurationError(
                f"RabbitMQ refused the exchange {self.exchange!r} ({refused}): it exists "
                "with another type or durability; choose another exchange name"
            )
        raise TransportError(f"cannot connect to RabbitMQ at {self._safe_url}: {failure}")

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, topic: str, /, *messages: Message) -> None:
        self._check_open()
        for message in messages:
            if not isinstance(message, Message) or message.topic != topic:
                raise TransportError(
                    f"publish({topic!r}, ...) takes Messages of that topic, got {message!r}"
                )
        if not isinstance(topic, str) or not _NAME.fullmatch(topic) or len(topic.encode()) > 255:
            raise MessageRejectedError(
                f"{topic!r} cannot be a RabbitMQ routing key: words of [A-Za-z0-9_-] "
                "separated by dots, at most 255 bytes"
            )
        if not messages:
            return
        limit = self._max_message_size
        if limit is not None and any(len(m.body) > limit for m in messages):
            await self._publish_all_but_oversized(topic, messages, limit)
        try:
            await self._send(topic, messages)
        except _OversizedError as refusal:
            # The broker closed the channel on the first message over its limit, failing
            # every publish in flight with it: find which were too large by the limit it
            # named, and publish the others again.
            if refusal.limit is None:
                raise MessageRejectedError(
                    f"RabbitMQ refused a message of {topic!r} as too large ({refusal}); raise "
                    "the broker's max_message_size or publish smaller events"
                ) from None
            self._max_message_size = refusal.limit
            if any(len(m.body) > refusal.limit for m in messages):
                await self._publish_all_but_oversized(topic, messages, refusal.limit)
            raise TransportError(
                f"RabbitMQ closed the publishing channel over another publish's oversized "
                f"message; nothing of {topic!r} is known to be stored: publish it again"
            ) from None

    async def _publish_all_but_oversized(
        self, topic: str, messages: tuple[Message, ...], limit: int
    ) -> NoReturn:
        fits = tuple(m for m in messages if len(m.body) <= limit)
        over = tuple(m for m in messages if len(m.body) > limit)
        if fits:  # a failure here is transient: the whole batch comes again
            try:
                await self._send(topic, fits)
            except _OversizedError:
                raise TransportError(
                    f"RabbitMQ closed the publishing channel over another publish's oversized "
                    f"message; {len(fits)} messages of {topic!r} were not confirmed: publish "
                    "them again"
                ) from None
        raise MessageTooLargeError(
            f"{len(over)} of {len(messages)} messages of {topic!r} are larger than the "
            f"broker's max_message_size ({limit} bytes; the largest is "
            f"{max(len(m.body) for m in over)}): raise max_message_size or publish smaller "
            f"events. The other {len(fits)} were published.",
            rejected=tuple(m.id for m in over),
        )

    async def _send(self, topic: str, messages: tuple[Message, ...]) -> None:
        """Publish ``messages`` on the publishing channel and await all their confirms."""
        connection = await self._ensure_connection()
        publisher = self._publisher
        if publisher is not None and publisher.is_closed and connection.connected.is_set():
            # The broker closed only the channel (it refused something, e.g. a message
            # over its size limit): the robust channel reopens at once, so wait for that.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CHANNEL_REOPEN):
                    while publisher.is_closed:  # ready() is set until the close is processed
                        await asyncio.sleep(0.05)
                        await publisher.ready()
        if publisher is None or publisher.is_closed:
            raise TransportError(
                f"the connection to RabbitMQ at {self._safe_url} is down (reconnecting in the "
                f"background); nothing of {topic!r} was published: try again"
            )
        failure: str | None = None
        try:
            async with asyncio.timeout(self._confirm_timeout):
                channel = cast("aiormq.Channel", await publisher.get_underlay_channel())
                # One write per message, in order, without waiting for each to drain; the
                # broker confirms the batch (batched fsyncs), and we await all confirms.
                results = await asyncio.gather(
                    *(
                        channel.basic_publish(
                            message.body,
                            exchange=self.exchange,
                            routing_key=topic,
                            properties=Basic.Properties(
                                delivery_mode=_PERSISTENT,
                                message_id=str(message.id),
                                headers={_KEY_HEADER: message.key}
                                if message.key is not None
                                else None,
                            ),
                            mandatory=True,
                            wait=False,
                        )
                        for message in messages
                    ),
                    return_exceptions=True,
                )
        except TimeoutError:
            failure = f"no confirm within {self._confirm_timeout:g} s"
        except Exception as error:  # a broken channel: nothing is known to be confirmed
            failure = _describe(error)
        if failure is not None:
            raise TransportError(
                f"RabbitMQ did not confirm {len(messages)} messages of {topic!r}: {failure}; "
                "they may or may not have been stored: publish them again"
            )
        self._check_results(topic, messages, results)

    def _check_results(self, topic: str, messages: tuple[Message, ...], results: list[Any]) -> None:
        returned = nacked = 0
        too_large: str | None = None
        other: str | None = None
        for result in results:
            if isinstance(result, Basic.Ack):
                continue
            if isinstance(result, aiormq.exceptions.PublishError) or not isinstance(
                result, BaseException
            ):
                returned += 1  # a return without raising would be a DeliveredMessage
            elif isinstance(result, aiormq.exceptions.DeliveryError):
                nacked += 1
            elif "max size" in str(result) or "message_size" in str(result):
                too_large = _describe(result)
            elif isinstance(result, asyncio.CancelledError):
                other = other or "the publish was cancelled"
            else:
                other = other or _describe(result)
        failed = len(messages) - sum(isinstance(r, Basic.Ack) for r in results)
        if not failed:
            return
        if too_large is not None:
            found = _MAX_SIZE.search(too_large)
            raise _OversizedError(too_large, int(found.group(1)) if found else None)
        if returned:
            raise TransportError(
                f"{returned} of {len(messages)} messages of {topic!r} were returned unroutable: "
                f"no queue is bound to routing key {topic!r} on exchange {self.exchange!r} (no "
                "consumer group subscribed it yet); start a worker for it, then retry"
            )
        if nacked:
            raise TransportError(
                f"RabbitMQ nacked {nacked} of {len(messages)} messages of {topic!r} (an "
                "internal broker error): publish them again"
            )
        raise TransportError(
            f"RabbitMQ did not confirm {failed} of {len(messages)} messages of {topic!r}: "
            f"{other}; publish them again"
        )

    # -- consuming -----------------------------------------------------------------------

    def _delivery_count(self, incoming: AbstractIncomingMessage) -> int:
        return 2 if incoming.redelivered else 1

    async def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[_Received]:
        self._check_open()
        if isinstance(topics, str) or not topics:
            raise ConfigurationError(f"subscribe takes a sequence of topics, got {topics!r}")
        wanted = tuple(dict.fromkeys(_check_name("topic", topic) for topic in topics))
        subscription = _Subscription(self, wanted, group)
        self._subscriptions.add(subscription)
        try:
            await subscription.start()
            while True:
                incoming = await subscription.inbox.get()
                if incoming is None:
                    return  # the transport was closed
                try:
                    incoming.channel  # noqa: B018 - raises if the channel it came on died
                except aiormq.exceptions.ChannelInvalidStateError:
                    continue  # unacked on a dead channel: the broker delivers it again
                if incoming.routing_key not in wanted:
                    subscription.bounce(incoming)
                    continue
                yield _Received(incoming, self._delivery_count(incoming))
        finally:
            self._subscriptions.discard(subscription)
            await subscription.stop()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            await subscription.stop()
        connection, publisher = self._connection, self._publisher
        self._connection = self._publisher = None
        # Channels first: a robust channel closed by its connection would try to restore
        # itself, and leave that task pending on a loop that may be about to close.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CONNECT_TIMEOUT):
                if publisher is not None:
                    await publisher.close()
                if connection is not None:
                    await connection.close()


class RabbitMQQuorumTransport(RabbitMQTransport):
    """``RabbitMQTransport`` on quorum queues, which count deliveries (``x-delivery-count``).

    ``RabbitMQTransport.from_url(url, quorum=True)`` gives one.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True, ordered_per_key=True, consumer_groups=True, counts_deliveries=True
    )

    def __init__(self, url: str, *, quorum: bool = True, **options: Any) -> None:
        if not quorum:
            raise ConfigurationError("RabbitMQQuorumTransport is quorum=True by definition")
        super().__init__(url, quorum=True, **options)

    def _delivery_count(self, incoming: AbstractIncomingMessage) -> int:
        previous = (incoming.headers or {}).get("x-delivery-count")
        return int(previous) + 1 if isinstance(previous, int) else 1
