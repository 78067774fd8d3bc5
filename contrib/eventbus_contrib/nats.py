"""NATS JetStream as an eventbus transport: ``nats://`` and ``tls://``.

What a user needs (the URL, the options, durability, redelivery, order, limits) is in
README.md, "Going distributed > NATS JetStream". The design, for maintainers:

- One stream ``stream`` captures ``<prefix>.>``: ``connect`` makes it (file storage, one
  replica, no limits, deduplication window ``duplicate_window``) or checks that an
  existing one captures that. A topic is the subject ``<prefix>.<topic>``.
- ``publish`` sends each message with ``Nats-Msg-Id`` = the envelope id and awaits every
  PubAck together (bounded by ``publish_timeout``): a relay retry within the window is
  stored once.
- A group is one durable pull consumer per topic, named from the group and the topic
  (sanitised to NATS's characters, plus a hash of both so names never collide), filtered
  on the topic's subject, explicit ack, deliver policy all. One filter subject per
  consumer keeps NATS 2.9 servers working (several are 2.10).
- ``delivery_count`` is JetStream's ``num_delivered``; ``nack(requeue=False)`` terminates
  the message. A closed subscription naks what it held only once its last pull request
  has ended at the server (at most 5 s, or ``ack_wait / 2``): JetStream 2.9 would hand
  the message to that very request otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
import nats
import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ReplayPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from eventbus import RedactingFilter, redact
from eventbus.errors import ConfigurationError, MessageRejectedError, TransportError
from eventbus.transports import Backoff, Capabilities, Message, url_options

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js.client import JetStreamContext

    from eventbus.typing import Received

__all__ = ["NATSTransport"]

logger = logging.getLogger("eventbus.nats")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core

_WORDS = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_MSG_ID = "Nats-Msg-Id"
# What NATS adds to a message's size for its one header (``NATS/1.0\r\n``, the header
# line, the blank line): the server's max_payload counts headers and body together.
_HEADER_BYTES = len(f"NATS/1.0\r\n{_MSG_ID}: {'0' * 36}\r\n\r\n")
# JetStream's error code for a message over the stream's own max_msg_size.
_ERR_MESSAGE_TOO_LARGE = 10054
_ERR_SUBJECTS_OVERLAP = 10065
_ERR_STREAM_NAME_IN_USE = 10058

# A pull request lives at most this long at the server, which ends it with a 408; no
# word by then (and a margin) means the request or its connection was lost. Short, for
# a second reason: JetStream (2.9) hands a nak'd message to any pull request still
# waiting, even one whose inbox is gone, where it sits unseen until ack_wait (and 2.9.10
# may then deliver it twice). So a subscription that closes naks what it held with a
# delay that outlasts its own requests (see _Subscription.close).
_PULL_EXPIRES_MAX = 5.0
_PULL_MARGIN = 1.0
_BACKOFF = Backoff(first=0.2, cap=5.0)
"""A subscription's waits between attempts to pull from a consumer it cannot reach."""


@attrs.frozen
class _Options:
    stream: str = "EVENTBUS"
    prefix: str = "eventbus"
    ack_wait: float = 30.0
    max_deliver: int | None = None
    batch: int = 100
    duplicate_window: float = 120.0
    publish_timeout: float = 5.0


_DEFAULTS: dict[str, Any] = {a.name: a.default for a in attrs.fields(_Options)}


def _options(given: dict[str, Any]) -> _Options:
    """Checked options (``url_options`` refused unknown names and typed the query's)."""
    values: dict[str, Any] = {}
    for name, value in given.items():
        values[name] = _convert(name, value)
    options = _Options(**values)
    for name in ("stream", "prefix"):
        if not isinstance(getattr(options, name), str):
            raise ConfigurationError(f"{name} must be a string, got {getattr(options, name)!r}")
    for name in ("batch", "max_deliver"):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigurationError(f"{name} must be a whole number, got {value!r}")
    for name in ("ack_wait", "duplicate_window", "publish_timeout"):
        value = getattr(options, name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}")
    if not _NAME.fullmatch(options.stream):
        raise ConfigurationError(
            f"stream={options.stream!r}: a JetStream stream name takes letters, digits, "
            "'_' and '-' only"
        )
    if not _WORDS.fullmatch(options.prefix):
        raise ConfigurationError(
            f"prefix={options.prefix!r}: a subject prefix is dot-separated words of "
            "letters, digits, '_' and '-' (no wildcards)"
        )
    for name in ("ack_wait", "duplicate_window", "publish_timeout"):
        if not getattr(options, name) > 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds")
    if options.max_deliver is not None and options.max_deliver < 1:
        raise ConfigurationError("max_deliver must be None (unlimited) or at least 1")
    if options.batch < 1:
        raise ConfigurationError("batch must be at least 1")
    return options


def _convert(name: str, value: Any) -> Any:
    if not isinstance(value, str) or name in ("stream", "prefix"):
        return value
    try:
        if name in ("batch", "max_deliver"):
            return None if value.lower() in ("", "none") else int(value)
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a number") from None


@attrs.frozen
class _Endpoint:
    """Where and as whom to connect, with the secret kept out of every rendering."""

    scheme: str
    hosts: tuple[str, ...]
    user: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    token: str | None = attrs.field(default=None, repr=False)

    @property
    def servers(self) -> list[str]:
        # Credentials go to nats-py as arguments, never inside these URLs: its errors and
        # logs may show a server URL.
        return [f"{self.scheme}://{host}" for host in self.hosts]

    def display(self) -> str:
        if self.token is not None:
            auth = "***@"
        elif self.user is not None:
            auth = f"{self.user}:***@" if self.password is not None else f"{self.user}@"
        else:
            auth = ""
        return f"{self.scheme}://{auth}{','.join(self.hosts)}"


def _without_credentials(url: str) -> str:
    """``url`` for an error: a bare user part is a token here, which ``redact`` (made for
    ``user:password@``) would keep."""
    parts = urlsplit(url)
    auth = "***@" if "@" in parts.netloc else ""
    return redact(urlunsplit(parts._replace(netloc=auth + parts.netloc.rpartition("@")[2])))


def _endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ConfigurationError(
            f"NATSTransport takes nats:// or tls:// URLs, got {_without_credentials(url)!r}"
        )
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    hosts = tuple(h.strip() for h in hostlist.split(",") if h.strip())
    if not hosts:
        hosts = ("127.0.0.1:4222",)
    hosts = tuple(h if re.search(r":\d+$", h) else f"{h}:4222" for h in hosts)
    user = password = token = None
    if userinfo:
        name, colon, secret = userinfo.partition(":")
        if colon:
            user, password = unquote(name), unquote(secret)
        else:
            token = unquote(name)
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            "a NATS URL has no path (streams and prefixes are options), got "
            f"{_without_credentials(url)!r}"
        )
    return _Endpoint(scheme, hosts, user, password, token)


def _durable(group: str, topic: str) -> str:
    """The durable consumer name of ``group`` on ``topic``: readable, and unique."""
    digest = hashlib.sha256(f"{group}\0{topic}".encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("_", f"{group}__{topic}")[:80]
    return f"{readable}__{digest}"


def _description(msg: Msg) -> str:
    # nats-py keys this header with a str-Enum member, which hashes unlike the str.
    return next((v for k, v in (msg.headers or {}).items() if k == "Description"), "")


def _is_status(msg: Msg) -> str | None:
    """The status code of a control message from the server (no data), or None."""
    if msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


class _NATSReceived:
    __slots__ = (
        "_msg",
        "_subscription",
        "body",
        "delivery_count",
        "message_id",
        "sequence",
        "topic",
    )

    def __init__(self, subscription: _Subscription, topic: str, msg: Msg) -> None:
        metadata = msg.metadata
        self._subscription = subscription
        self._msg = msg
        self.topic = topic
        self.body = msg.data
        self.sequence = metadata.sequence.stream
        self.message_id = f"{metadata.stream}:{self.sequence}"
        self.delivery_count = metadata.num_delivered

    def __repr__(self) -> str:
        return f"<NATS message {self.message_id} on {self.topic!r}>"

    async def ack(self) -> None:
        await self._settle(self._msg.ack)

    async def nack(self, *, requeue: bool = True) -> None:
        await self._settle(self._msg.nak if requeue else self._msg.term)

    async def touch(self) -> None:
        """Still being handled: JetStream's in-progress ack restarts ack_wait."""
        if self not in self._subscription.held:
            return  # settled, or handed back when its subscription closed
        try:
            await self._msg.in_progress()
        except nats.errors.Error as error:
            raise TransportError(f"NATS could not touch {self!r}: {error!r}") from error

    async def _settle(self, how: Any) -> None:
        self._subscription.held.discard(self)
        try:
            await how()
        except nats.errors.MsgAlreadyAckdError:
            return  # settled already, or handed back when its subscription closed
        except nats.errors.Error as error:
            # Unsettled, it comes back after ack_wait: at-least-once still holds.
            raise TransportError(f"NATS could not settle {self!r}: {error!r}") from error


@attrs.define(eq=False)
class _Pull:
    """One durable consumer of a subscription and the pull request it has out."""

    index: int
    topic: str
    subject: str
    durable: str
    serial: int = 0
    """Which of this pull's requests is the current one (replies name it)."""
    expires_at: float = 0.0
    """When the current request ends at the server."""
    outstanding: int = 0
    """Messages the current request may still bring; 0 = ask again."""
    deadline: float = 0.0
    """When silence from the server means the request was lost."""
    ready: bool = False
    """The durable consumer is known to exist."""


_RECONNECTED = object()
_CLOSED = object()


class _Subscription:
    """One ``subscribe`` call: a pull consumer per topic, one inbox, one queue."""

    def __init__(self, transport: NATSTransport, topics: Sequence[str], group: str) -> None:
        self.transport = transport
        self.group = group
        options = transport._options
        self.pulls = [
            _Pull(i, t, f"{options.prefix}.{t}", _durable(group, t)) for i, t in enumerate(topics)
        ]
        self.by_subject = {pull.subject: pull for pull in self.pulls}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.held: set[_NATSReceived] = set()
        self.inbox = ""
        self.sub: Subscription | None = None
        self.failures = 0
        """Pulls that failed in a row (the next wait is ``_BACKOFF.delay(failures)``)."""
        # Under ack_wait, so a redelivery after ack_wait never meets a request of a
        # consumer that died (see _PULL_EXPIRES_MAX).
        self.expires = min(_PULL_EXPIRES_MAX, max(0.5, options.ack_wait / 2))

    async def _deliver(self, msg: Msg) -> None:
        self.queue.put_nowait(msg)

    async def open(self, nc: Client) -> None:
        self.inbox = nc.new_inbox()
        self.sub = await nc.subscribe(f"{self.inbox}.*.*", cb=self._deliver)

    async def prepare(self, pull: _Pull) -> None:
        """Make ``pull``'s durable consumer exist with this transport's settings."""
        await self.transport._client()  # the stream too, if it was found missing
        await self.transport._ensure_consumer(pull.durable, pull.subject)
        pull.ready = True

    async def request(self, nc: Client, pull: _Pull) -> None:
        options = self.transport._options
        pull.serial += 1
        pull.outstanding = options.batch
        pull.expires_at = time.monotonic() + self.expires
        pull.deadline = pull.expires_at + _PULL_MARGIN
        body = json.dumps({"batch": options.batch, "expires": int(self.expires * 1e9)}).encode()
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{options.stream}.{pull.durable}",
            body,
            reply=f"{self.inbox}.{pull.index}.{pull.serial}",
        )

    def route(self, msg: Msg) -> tuple[_Pull, bool] | None:
        """The pull a message belongs to, and whether it answers the current request.

        JetStream delivers a message under its own subject (one pull per subject here);
        status replies come to the request's reply subject, which names the request, so
        a late status of a replaced request is told apart (messages count either way)."""
        pull = self.by_subject.get(msg.subject)
        if pull is not None:
            return pull, True
        _, _, tail = msg.subject.rpartition(f"{self.inbox}.")
        index, _, serial = tail.partition(".")
        try:
            pull = self.pulls[int(index)]
        except (ValueError, IndexError):
            return None
        return pull, serial == str(pull.serial)

    async def close(self) -> None:
        """Stop receiving, then hand back (nak) everything delivered and not settled, in
        stream order, so the group's next consumer has it at once."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        pending: list[_NATSReceived] = list(self.held)
        self.held.clear()
        while not self.queue.empty():
            msg = self.queue.get_nowait()
            if msg is _RECONNECTED or msg is _CLOSED or _is_status(msg) is not None:
                continue
            routed = self.route(msg)
            if routed is not None:
                with contextlib.suppress(nats.errors.NotJSMessageError):
                    pending.append(_NATSReceived(self, routed[0].topic, msg))
        # An entry can be here twice (ack_wait ran out and it came again before we
        # stopped): nak its latest delivery only, once.
        latest: dict[int, _NATSReceived] = {}
        for received in pending:
            known = latest.get(received.sequence)
            if known is None or received.delivery_count > known.delivery_count:
                latest[received.sequence] = received
        # Our pull requests may still wait at the server; redelivered before they end,
        # these would go to them, unseen (see _PULL_EXPIRES_MAX).
        live = max((p.expires_at for p in self.pulls if p.outstanding > 0), default=0.0)
        delay = live - time.monotonic() + 0.25
        for sequence in sorted(latest):
            with contextlib.suppress(Exception):
                await latest[sequence]._msg.nak(delay=delay if delay > 0.25 else None)


class NATSTransport:
    """``nats://`` or ``tls://``: JetStream streams, durable pull consumers, PubAcks."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True,
        ordered_per_key=True,
        consumer_groups=True,
        counts_deliveries=True,
        new_groups_read_history=True,
        native_dead_letter=False,
        delayed_redelivery=False,  # NAK can take a delay, but Received.nack has none
    )

    def __init__(self, endpoint: _Endpoint, options: _Options) -> None:
        self._endpoint = endpoint
        self._options = options
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._stream_ready = False
        self._closed = False
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_prefix = ""
        self._tokens = itertools.count()
        self._subscriptions: set[_Subscription] = set()
        self._outage_reported = False

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("nats", "tls"):
            _endpoint(url)  # refuses it, saying why
        # nats-py reads no query parameters: every name in the query must be an option.
        rest, chosen = url_options(
            url, _DEFAULTS, options, client_options=(), transport="NATSTransport"
        )
        return cls(_endpoint(rest), _options(chosen))

    @property
    def redelivery_timeout(self) -> float:
        """Seconds an unacknowledged message waits before JetStream delivers it again."""
        return self._options.ack_wait

    def __repr__(self) -> str:
        return (
            f"<NATSTransport {self._endpoint.display()} stream={self._options.stream!r} "
            f"prefix={self._options.prefix!r}>"
        )

    __str__ = __repr__

    @property
    def closed(self) -> bool:
        return self._closed

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        await self._client()

    async def _client(self) -> Client:
        if self._closed:
            raise TransportError(f"{self!r} is closed; make a new one")
        if self._nc is not None and self._stream_ready:
            return self._nc
        async with self._connecting:
            if self._nc is None:
                self._nc = await self._open()
                self._js = self._nc.jetstream(timeout=self._options.publish_timeout)
            if not self._stream_ready:
                await self._ensure_stream()
                self._stream_ready = True
            return self._nc

    async def _open(self) -> Client:
        endpoint = self._endpoint
        try:
            nc = await nats.connect(
                servers=endpoint.servers,
                user=endpoint.user,
                password=endpoint.password,
                token=endpoint.token,
                tls=ssl.create_default_context() if endpoint.scheme == "tls" else None,
                name="eventbus",
                connect_timeout=2,
                # The first connect tries a few times, then fails: a wrong URL is reported.
                # Once connected, reconnection never gives up (set below): a worker must
                # outlive a broker restart of any length.
                allow_reconnect=True,
                max_reconnect_attempts=2,
                reconnect_time_wait=1,
                ping_interval=10,
                max_outstanding_pings=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
        except Exception as error:
            raise TransportError(
                f"cannot connect to NATS at {endpoint.display()}: "
                f"{redact(str(error)) or type(error).__name__}"
            ) from None
        nc.options["max_reconnect_attempts"] = -1
        self._reply_prefix = nc.new_inbox()
        await nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        return nc

    async def _on_error(self, error: Exception) -> None:
        nc = self._nc
        reconnecting = nc is not None and (nc.is_reconnecting or nc.is_connecting)
        # Each failed attempt of an outage reports here (every second): the first one of
        # an outage is worth a WARNING, the rest are noise.
        level = logging.DEBUG if reconnecting and self._outage_reported else logging.WARNING
        logger.log(level, "NATS %s: %s", self._endpoint.display(), redact(repr(error)))
        if reconnecting:
            self._outage_reported = True
        if reconnecting and nc is not None and nc._transport is not None:
            # nats-py (2.16) keeps the socket of a reconnect attempt that failed after
            # the TCP connect (no INFO: a balancer or a server shutting down) and opens
            # the next one over it, leaking it to the garbage collector (ResourceWarning).
            # No live traffic uses the socket while (re)connecting: close it.
            nc._transport.close()  # type: ignore[no-untyped-call]

    async def _on_disconnected(self) -> None:
        if not self._closed:
            logger.warning("NATS %s: disconnected, reconnecting", self._endpoint.display())

    async def _on_reconnected(self) -> None:
        self._outage_reported = False
        logger.warning("NATS %s: reconnected", self._endpoint.display())
        for subscription in list(self._subscriptions):
            subscription.queue.put_nowait(_RECONNECTED)

    async def _ensure_stream(self) -> None:
        assert self._js is not None
        options = self._options
        wanted = f"{options.prefix}.>"
        config = StreamConfig(
            name=options.stream,
            subjects=[wanted],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            duplicate_window=options.duplicate_window,
        )
        try:
            try:
                info = await self._js.stream_info(options.stream)
            except nats.js.errors.NotFoundError:
                info = await self._js.add_stream(config)
        except nats.js.errors.BadRequestError as error:
            if error.err_code == _ERR_SUBJECTS_OVERLAP:
                raise ConfigurationError(
                    f"another JetStream stream already captures subjects of {wanted!r}; "
                    "choose another prefix= (or pass that stream as stream=)"
                ) from None
            if error.err_code != _ERR_STREAM_NAME_IN_USE:
                raise TransportError(
                    f"NATS refused the stream {options.stream!r}: {error.description}"
                ) from None
            # Another process made it between our look and our create: check its subjects.
            info = await self._js.stream_info(options.stream)
        except nats.errors.Error as error:
            raise TransportError(f"cannot set up stream {options.stream!r}: {error!r}") from None
        subjects = info.config.subjects or []
        if wanted not in subjects:
            raise ConfigurationError(
                f"the JetStream stream {options.stream!r} exists with subjects {subjects}, "
                f"not {wanted!r}; pass another stream= (or prefix=) or fix that stream"
            )

    async def _ensure_consumer(self, durable: str, subject: str) -> None:
        assert self._js is not None
        options = self._options
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            replay_policy=ReplayPolicy.INSTANT,
            ack_wait=options.ack_wait,
            max_deliver=options.max_deliver or -1,
            # Room for several consumers of the group, each holding a batch or two.
            max_ack_pending=max(1000, 10 * options.batch),
        )
        try:
            info = await self._js.consumer_info(options.stream, durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            current = info.config
            if current.filter_subject != subject:
                raise ConfigurationError(
                    f"the consumer {durable!r} of stream {options.stream!r} filters "
                    f"{current.filter_subject!r}, not {subject!r}; delete it (nats consumer rm)"
                )
            if (current.ack_wait, current.max_deliver) == (config.ack_wait, config.max_deliver):
                return
        try:
            await self._js.add_consumer(options.stream, config)
        except nats.js.errors.BadRequestError as error:
            raise ConfigurationError(
                f"NATS refused the consumer {durable!r} on {subject!r}: {error.description}"
            ) from None

    # -- publishing --------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        future = self._replies.pop(msg.subject.rpartition(".")[2], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def publish(self, topic: str, /, *messages: Message) -> None:
        if self._closed:
            raise TransportError(f"{self!r} is closed; make a new one")
        self._check(topic, messages)
        if not messages:
            return
        nc = await self._client()
        self._check_sizes(topic, messages, nc.max_payload)
        subject = f"{self._options.prefix}.{topic}"
        futures: list[tuple[Message, asyncio.Future[Msg]]] = []
        loop = asyncio.get_running_loop()
        try:
            # Sent one after another (so the stream keeps their order), confirmed together.
            for message in messages:
                token = str(next(self._tokens))
                future: asyncio.Future[Msg] = loop.create_future()
                self._replies[token] = future
                futures.append((message, future))
                await nc.publish(
                    subject,
                    message.body,
                    reply=f"{self._reply_prefix}.{token}",
                    headers={_MSG_ID: str(message.id)},
                )
            try:
                async with asyncio.timeout(self._options.publish_timeout):
                    replies = await asyncio.gather(*(f for _, f in futures))
            except TimeoutError:
                missing = sum(not f.done() for _, f in futures)
                raise TransportError(
                    f"NATS confirmed {len(futures) - missing} of {len(futures)} messages on "
                    f"{subject!r} within {self._options.publish_timeout} s; the rest may or "
                    "may not be stored (a retry is deduplicated by message id)"
                ) from None
        except nats.errors.MaxPayloadError:
            # The server lowered max_payload under us (a reconnect to another server).
            raise MessageRejectedError(
                f"a message on {subject!r} is over the NATS server's max_payload"
            ) from None
        except nats.errors.Error as error:
            raise TransportError(f"NATS publish on {subject!r} failed: {error!r}") from None
        finally:
            for _, future in futures:
                future.cancel()
            for token in [t for t, f in self._replies.items() if f.cancelled()]:
                del self._replies[token]
        for (message, _), reply in zip(futures, replies, strict=True):
            self._confirmed(subject, message, reply)

    def _check(self, topic: str, messages: Sequence[Message]) -> None:
        if not isinstance(topic, str) or not _WORDS.fullmatch(topic):
            raise MessageRejectedError(
                f"{topic!r} is not a NATS subject: a topic is dot-separated words of "
                "letters, digits, '_' and '-'"
            )
        for message in messages:
            if not isinstance(message, Message) or message.topic != topic:
                raise TransportError(
                    f"publish({topic!r}, ...) takes Messages of that topic, got {message!r}"
                )

    @staticmethod
    def _check_sizes(topic: str, messages: Sequence[Message], limit: int) -> None:
        """Refuse the batch before sending any of it: the server would close the
        connection on an oversized message (and nats-py counts only the body)."""
        for message in messages:
            if len(message.body) + _HEADER_BYTES > limit:
                raise MessageRejectedError(
                    f"message {message.id} on {topic!r} is {len(message.body)} bytes; the NATS "
                    f"server takes at most {limit} bytes (max_payload, headers included)"
                )

    def _confirmed(self, subject: str, message: Message, reply: Msg) -> None:
        if _is_status(reply) == "503":
            self._stream_ready = False  # deleted under us? make it again on the next publish
            raise TransportError(f"no JetStream stream captures {subject!r} (no responders)")
        try:
            answer = json.loads(reply.data)
        except ValueError:
            raise TransportError(f"NATS answered {reply.data[:200]!r} to a publish") from None
        error = answer.get("error")
        if error is None:
            return
        text = f"JetStream refused message {message.id} on {subject!r}: {error.get('description')}"
        if error.get("err_code") == _ERR_MESSAGE_TOO_LARGE:
            raise MessageRejectedError(text)
        raise TransportError(text)

    # -- consuming ---------------------------------------------------------------------

    async def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]:
        if self._closed:
            raise TransportError(f"{self!r} is closed; make a new one")
        if isinstance(topics, str) or not topics:
            raise ConfigurationError(f"subscribe takes a sequence of topics, got {topics!r}")
        for topic in topics:
            if not isinstance(topic, str) or not _WORDS.fullmatch(topic):
                raise ConfigurationError(
                    f"{topic!r} is not a topic: dot-separated words of letters, digits, '_', '-'"
                )
        if not isinstance(group, str) or not group:
            raise ConfigurationError(f"group must be a non-empty string, got {group!r}")
        nc = await self._client()
        subscription = _Subscription(self, list(dict.fromkeys(topics)), group)
        self._subscriptions.add(subscription)
        try:
            await subscription.open(nc)
            while not self._closed:
                msg = await self._next(nc, subscription)
                if msg is None:
                    continue
                if self.closed:
                    subscription.queue.put_nowait(msg)  # handed back by close() below
                    break
                routed = subscription.route(msg)
                if routed is None:
                    continue
                pull, current = routed
                status = _is_status(msg)
                if status is not None:
                    if current:
                        self._on_status(pull, status, msg)
                    continue
                if current:
                    pull.outstanding = max(0, pull.outstanding - 1)
                try:
                    received = _NATSReceived(subscription, pull.topic, msg)
                except nats.errors.NotJSMessageError:
                    # Not a JetStream delivery (someone published to our inbox): nothing
                    # to ack, nothing of ours lost.
                    logger.warning(
                        "NATS: ignored a message on %r that JetStream did not send", msg.subject
                    )
                    continue
                subscription.held.add(received)
                yield received
        finally:
            self._subscriptions.discard(subscription)
            await subscription.close()

    async def _next(self, nc: Client, subscription: _Subscription) -> Msg | None:
        """The next reply for the subscription, after making sure every pull has a live
        request out; None when something needs looking at again (a timeout, a wake-up)."""
        for pull in subscription.pulls:
            if pull.outstanding > 0:
                continue
            try:
                if not pull.ready:
                    await subscription.prepare(pull)
                await subscription.request(nc, pull)
                subscription.failures = 0
            except ConfigurationError:
                raise
            except (nats.errors.Error, TransportError) as error:
                pull.ready = False
                delay = _BACKOFF.delay(subscription.failures)
                subscription.failures += 1
                # While the connection is down, its callbacks have said so already.
                level = logging.WARNING if nc.is_connected else logging.DEBUG
                logger.log(
                    level,
                    "NATS %s: cannot pull from consumer %r (%s); again in %.1f s",
                    self._endpoint.display(),
                    pull.durable,
                    redact(repr(error)),
                    delay,
                )
                await asyncio.sleep(delay)
                return None
        queue = subscription.queue
        now = time.monotonic()
        wait = max(0.0, min(p.deadline for p in subscription.pulls) - now)
        try:
            # wait_for costs a task per call: only pay it when there is nothing to take.
            item = (
                queue.get_nowait() if queue.qsize() else await asyncio.wait_for(queue.get(), wait)
            )
        except TimeoutError:
            for pull in subscription.pulls:
                if pull.deadline <= time.monotonic():
                    logger.warning(
                        "NATS %s: consumer %r did not end its pull request; pulling again",
                        self._endpoint.display(),
                        pull.durable,
                    )
                    pull.outstanding = 0
            return None
        if item is _RECONNECTED:
            for pull in subscription.pulls:
                pull.outstanding = 0  # requests may have died with the connection
            return None
        if item is _CLOSED:
            return None
        return item  # type: ignore[no-any-return]

    def _on_status(self, pull: _Pull, status: str, msg: Msg) -> None:
        if status == "100":
            return  # a heartbeat (we ask for none; harmless)
        pull.outstanding = 0  # this request is over; the next loop asks again
        if status in ("404", "408"):
            return  # no messages / the request expired: normal
        description = _description(msg)
        if status == "503" or "Consumer Deleted" in description:
            # The consumer (or its stream) is gone: check the stream, make the consumer.
            pull.ready = False
            self._stream_ready = False
        logger.warning(
            "NATS %s: consumer %r said %s %s",
            self._endpoint.display(),
            pull.durable,
            status,
            description,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscriptions):
            # Hand back what it holds while the connection still works, then wake its
            # iterator, which finds the transport closed and ends.
            await subscription.close()
            subscription.queue.put_nowait(_CLOSED)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.flush(timeout=1)
            with contextlib.suppress(Exception):
                await nc.close()
