"""Kafka as an eventbus transport, on aiokafka: ``kafka://`` and ``kafkas://`` (TLS).

What a user needs (the URL, the options, durability, poison, order, limits) is in
README.md, "Going distributed > Kafka". The design, for maintainers:

- A topic is ``<prefix>.<event name>``, made on first use (with ``min.insync.replicas``
  2 when ``replication`` is 3 or more); the message key is the envelope's key, so Kafka's
  own partitioner keeps a key on one partition, and with it one consumer at a time.
  Headers ``eventbus-id`` and ``eventbus-key`` carry the envelope's id and key.
- Offsets are committed by hand, only below messages whose partition is settled up to
  them, every ``commit_interval`` and when a partition is let go; a member losing
  partitions in a rebalance stops handing them out and waits up to ``handback_wait`` for
  those in hand first (aiokafka awaits the rebalance listener).
- Kafka counts no deliveries: ``_ledger`` keeps each group's count at the broker, in the
  compacted topic ``<prefix>..deliveries.<group>``, written before a fetch's messages are
  handed out and when a partition is let go. After an owner died, the next hands out what
  it may have held one message at a time, so a poison message is counted exactly and its
  neighbours at most once more. ``_endpoint`` reads the URL and the options.
- ``acks=all`` through the idempotent producer (``idempotent=false`` for brokers that
  refuse it, such as the tansu test broker); a message over ``max_message_bytes`` is
  refused before anything of its batch is sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Self

from eventbus import RedactingFilter, redact
from eventbus.errors import (
    ConfigurationError,
    MessageRejectedError,
    MissingDependencyError,
    TransportError,
)
from eventbus.transports import Backoff, Capabilities, Message, url_options

from ._endpoint import DEFAULTS, Endpoint, Options, endpoint, is_topic, options, topic_name
from ._ledger import HandOut, PartitionLedger, Verdict

try:
    import aiokafka
    import aiokafka.errors
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.structs import TopicPartition
except ImportError as error:  # pragma: no cover - the extra is installed in development
    raise MissingDependencyError(
        'eventbus_contrib.kafka needs aiokafka: pip install "eventbus[kafka]"'
    ) from error

if TYPE_CHECKING:
    from eventbus.typing import Received

__all__ = ["KafkaTransport"]

logger = logging.getLogger("eventbus.kafka")
logger.addFilter(RedactingFilter())  # secrets masked in every record, as in the core

ID_HEADER: Final = "eventbus-id"
KEY_HEADER: Final = "eventbus-key"
_RECORD_OVERHEAD: Final = 128
"""Bytes Kafka adds to a record of one message (batch header, lengths, header names)."""
_TOPIC_EXISTS: Final = 36
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")
_TAKEOVER_BACKOFF: Final = Backoff(first=0.2, cap=5.0)
_IDEMPOTENCE_HINT: Final = (
    "the broker refused to register the idempotent producer (InitProducerId); Kafka "
    "0.11 or newer and Redpanda allow it: check the broker's version and the client's "
    "IDEMPOTENT_WRITE permission, or pass idempotent=false (a publish retried after a "
    "lost reply may then be stored twice; the inbox absorbs it)"
)


def _group_token(group: str) -> str:
    """``group`` as words a topic name takes: readable, and unique (a hash of it)."""
    digest = hashlib.sha256(group.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', group)[:60]}-{digest}"


def _describe(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")


class _KafkaReceived:
    """A message a subscription handed out: ``ack`` settles it, ``nack`` hands it out
    again (counted) or, without requeue, drops it."""

    __slots__ = ("_subscription", "body", "delivery_count", "message_id", "offset", "topic", "tp")

    def __init__(
        self, subscription: _Subscription, tp: TopicPartition, offset: int, body: bytes, count: int
    ) -> None:
        self._subscription = subscription
        self.tp = tp
        self.offset = offset
        self.topic = subscription.topics[tp.topic]
        self.body = body
        self.delivery_count = count
        self.message_id = f"{tp.topic}:{tp.partition}:{offset}"

    def __repr__(self) -> str:
        return f"<Kafka message {self.message_id} (delivery {self.delivery_count})>"

    async def ack(self) -> None:
        self._subscription.settle(self)

    async def nack(self, *, requeue: bool = True) -> None:
        if requeue:
            await self._subscription.again(self)
        else:
            self._subscription.settle(self)


class _Owned:
    """A partition this subscription owns: its ledger and the messages fetched for it."""

    __slots__ = ("buffer", "ledger", "paused")

    def __init__(self, ledger: PartitionLedger) -> None:
        self.ledger = ledger
        self.buffer: collections.deque[Any] = collections.deque()
        self.paused = False


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc] # aiokafka is untyped
    def __init__(self, subscription: _Subscription) -> None:
        self._subscription = subscription

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._subscription.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._subscription.assigned(assigned)


class _Subscription:
    """One member of a group: what it owns, hands out, settles and commits."""

    def __init__(self, transport: KafkaTransport, topics: Sequence[str], group: str) -> None:
        self.transport = transport
        self.group = group
        self.topics = {transport.topic(t): t for t in topics}
        self.state_topic = transport.state_topic(group)
        self.consumer: Any = None
        self.reader: Any = None
        self.states: dict[str, HandOut | None] = {}
        self.owned: dict[TopicPartition, _Owned] = {}
        self.unready: set[TopicPartition] = set()
        self.again_queue: collections.deque[_KafkaReceived] = collections.deque()
        self.settled = asyncio.Event()
        self.committed: dict[TopicPartition, int] = {}
        self.committing: asyncio.Task[None] | None = None
        self.failures = 0
        """Take-overs of its partitions that failed in a row (for the wait before the next)."""
        self.closed = False

    # -- joining and leaving -----------------------------------------------------------

    async def open(self) -> None:
        chosen = self.transport.options
        settings = self.transport.endpoint.client_settings(chosen)
        self.consumer = aiokafka.AIOKafkaConsumer(
            group_id=self.transport.group_id(self.group),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(chosen.session_timeout * 1000),
            heartbeat_interval_ms=int(chosen.session_timeout * 1000 / 3),
            rebalance_timeout_ms=int((chosen.handback_wait + chosen.session_timeout) * 1000),
            max_partition_fetch_bytes=max(1_048_576, chosen.max_message_bytes * 2),
            fetch_max_wait_ms=int(chosen.fetch_wait * 1000),
            consumer_timeout_ms=min(200, int(chosen.fetch_wait * 1000)),
            **settings,
        )
        self.reader = aiokafka.AIOKafkaConsumer(enable_auto_commit=False, **settings)
        try:
            await self.consumer.start()
            await self.reader.start()
        except aiokafka.errors.KafkaError as error:
            raise TransportError(
                f"cannot reach Kafka at {self.transport.endpoint.display()}: {_describe(error)}"
            ) from None
        state_tp = TopicPartition(self.state_topic, 0)
        self.reader.assign([state_tp])
        await self.reader.seek_to_beginning(state_tp)
        self.consumer.subscribe(list(self.topics), listener=_Listener(self))
        self.committing = asyncio.create_task(self._commit_regularly())

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Called by aiokafka inside a rebalance: read nothing from these until each has
        its ledger (made in ``next``, where a failure can be retried)."""
        fresh = [tp for tp in assigned if tp not in self.owned]
        if fresh:
            self.consumer.pause(*fresh)
            self.unready.update(fresh)

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Called by aiokafka before a rebalance: let these partitions go in order."""
        self.unready.difference_update(revoked)
        going = {tp: self.owned[tp] for tp in revoked if tp in self.owned}
        if not going:
            return
        self.again_queue = collections.deque(r for r in self.again_queue if r.tp not in going)
        deadline = time.monotonic() + self.transport.options.handback_wait
        while any(o.ledger.unsettled for o in going.values()) and time.monotonic() < deadline:
            self.settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), deadline - time.monotonic())
        await self._hand_over(going)

    async def _hand_over(self, going: dict[TopicPartition, _Owned]) -> None:
        """Commit what is settled, then leave each partition's record for the next owner."""
        for tp in going:
            self.owned.pop(tp, None)
        with contextlib.suppress(Exception):
            await self._commit({tp: owned.ledger.committed for tp, owned in going.items()})
        for tp, owned in going.items():
            record = owned.ledger.handover()
            if record is None:
                continue
            try:
                await self.transport.write_record(self.state_topic, self._key(tp), record)
            except TransportError as error:
                # The last record stays: the next owner reads carefully, counting once more.
                logger.warning("could not leave the delivery record of %s: %s", tp, error)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.committing is not None:
            self.committing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.committing
        try:
            if self.owned:
                await self._hand_over(dict(self.owned))
        finally:
            for client in (self.consumer, self.reader):
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.stop()

    # -- handing out ---------------------------------------------------------------------

    async def next(self) -> _KafkaReceived:
        while True:
            if self.again_queue:
                return self.again_queue.popleft()
            if self.unready:
                await self._prepare()
            taken = await self._take()
            if taken is not None:
                return taken
            await self._fetch()

    async def _take(self) -> _KafkaReceived | None:
        """The next message to hand out, from any owned partition, or None.

        A message to be handed out alone (after an owner died) waits until no other such
        message of any partition is out, and until what is settled is committed: if the
        process dies then, only the message in hand is counted once more, not its
        neighbours in other partitions that were done with.
        """
        for tp, owned in list(self.owned.items()):
            ledger = owned.ledger
            while owned.buffer:
                record = owned.buffer[0]
                if ledger.is_careful(record.offset) and any(
                    o.ledger.careful_out for o in self.owned.values()
                ):
                    break
                verdict, count = ledger.admit(record.offset)
                if verdict is Verdict.WAIT:
                    break
                if verdict is Verdict.IGNORE:
                    owned.buffer.popleft()
                    continue
                if verdict is Verdict.SKIP:
                    owned.buffer.popleft()
                    ledger.taken(record.offset, None)
                    continue
                if ledger.record is not None:
                    if ledger.record.careful is not None:
                        await self._commit({t: o.ledger.committed for t, o in self.owned.items()})
                    await self.transport.write_record(
                        self.state_topic, self._key(tp), ledger.record
                    )
                    if self.owned.get(tp) is not owned:
                        break  # revoked while the record was written
                owned.buffer.popleft()
                ledger.taken(record.offset, count)
                self._resume_if_drained(tp, owned)
                return _KafkaReceived(self, tp, record.offset, record.value or b"", count)
            self._resume_if_drained(tp, owned)
        return None

    def _resume_if_drained(self, tp: TopicPartition, owned: _Owned) -> None:
        if owned.paused and len(owned.buffer) < self.transport.options.batch:
            owned.paused = False
            with contextlib.suppress(Exception):
                self.consumer.resume(tp)

    async def _fetch(self) -> None:
        waiting = any(o.buffer for o in self.owned.values())
        timeout = 50 if waiting else 500
        batch = self.transport.options.batch
        fetched = await self.consumer.getmany(timeout_ms=timeout, max_records=batch)
        for tp, records in fetched.items():
            owned = self.owned.get(tp)
            if owned is None:
                continue  # no longer ours (or not ready): its next owner reads them
            owned.buffer.extend(records)
            if len(owned.buffer) >= 2 * batch and not owned.paused:
                owned.paused = True
                self.consumer.pause(tp)

    async def _prepare(self) -> None:
        """Give each newly assigned partition its ledger, from the group's committed
        offset and the last delivery record, then start reading it."""
        wanted = sorted(self.unready, key=lambda tp: (tp.topic, tp.partition))
        try:
            await self._read_records()
            consumer = self.consumer
            firsts = await consumer.beginning_offsets(wanted)
            for tp in wanted:
                if tp not in self.unready:
                    continue  # revoked meanwhile
                committed = await consumer.committed(tp)
                start = committed if committed is not None else firsts[tp]
                ledger = PartitionLedger(
                    start,
                    self.states.get(self._key(tp)),
                    ahead=self.transport.options.batch,
                )
                self.owned[tp] = _Owned(ledger)
                self.committed[tp] = start
                self.unready.discard(tp)
                consumer.seek(tp, start)
                consumer.resume(tp)
        except (aiokafka.errors.KafkaError, TransportError) as error:
            delay = _TAKEOVER_BACKOFF.delay(self.failures)
            self.failures += 1
            logger.warning(
                "group %r could not take over its partitions yet (%s); again in %.1f s",
                self.group,
                _describe(error),
                delay,
            )
            await asyncio.sleep(delay)
        else:
            self.failures = 0

    async def _read_records(self) -> None:
        """Read the group's delivery records up to their end (each key's last wins): until
        the reader is past the end offset the broker gives and a fetch brings nothing more
        (the end offset alone is not trusted: tansu 0.6 answers the first offset of the
        last batch, plus one)."""
        state_tp = TopicPartition(self.state_topic, 0)
        end = (await self.reader.end_offsets([state_tp]))[state_tp]
        while True:
            fetched = await self.reader.getmany(state_tp, timeout_ms=100, max_records=1000)
            records = fetched.get(state_tp, [])
            for record in records:
                key = (record.key or b"").decode(errors="replace")
                self.states[key] = HandOut.decode(record.value)
            if not records and await self.reader.position(state_tp) >= end:
                return

    # -- settling and committing --------------------------------------------------------

    def settle(self, received: _KafkaReceived) -> None:
        owned = self.owned.get(received.tp)
        if owned is None:
            return  # let go meanwhile: its next owner hands it out again
        owned.ledger.settle(received.offset)
        self.settled.set()

    async def again(self, received: _KafkaReceived) -> None:
        owned = self.owned.get(received.tp)
        if owned is None:
            return
        count, record = owned.ledger.again(received.offset)
        await self.transport.write_record(self.state_topic, self._key(received.tp), record)
        self.again_queue.append(
            _KafkaReceived(self, received.tp, received.offset, received.body, count)
        )

    async def _commit_regularly(self) -> None:
        while True:
            await asyncio.sleep(self.transport.options.commit_interval)
            try:
                await self._commit({tp: o.ledger.committed for tp, o in self.owned.items()})
            except Exception as error:
                logger.debug("commit of group %r failed: %s", self.group, _describe(error))

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        due = {tp: o for tp, o in offsets.items() if o > self.committed.get(tp, -1)}
        if not due:
            return
        await self.consumer.commit(due)
        for tp, offset in due.items():
            self.committed[tp] = max(offset, self.committed.get(tp, -1))

    def _key(self, tp: TopicPartition) -> str:
        return f"{tp.topic}:{tp.partition}"


class KafkaTransport:
    """``kafka://`` / ``kafkas://``: a topic per event name, a consumer group per group."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        persistent=True,  # as far as replication goes: see the module doc
        ordered_per_key=True,
        consumer_groups=True,
        counts_deliveries=True,  # kept by the group at the broker: see the module doc
        new_groups_read_history=True,
    )

    def __init__(self, url: str, **given: Any) -> None:
        self.endpoint: Endpoint = endpoint(url)
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ConfigurationError(
                f"KafkaTransport has no option {', '.join(map(repr, unknown))}; its options "
                f"are {', '.join(sorted(DEFAULTS))}"
            )
        self.options: Options = options({**DEFAULTS, **given})
        self._producer: Any = None
        self._admin: Any = None
        self._topics: set[str] = set()
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._closing = False
        self._subscriptions: set[_Subscription] = set()

    @classmethod
    def from_url(cls, url: str, /, **options: Any) -> Self:
        """``url`` may carry the options in its query string too
        (``kafka://host:9092?prefix=shop&partitions=12``); keyword arguments win."""
        endpoint(url)  # a clear error for what is no Kafka URL, before the query is read
        rest, chosen = url_options(
            url, DEFAULTS, options, client_options=(), transport="KafkaTransport", client="aiokafka"
        )
        return cls(rest, **chosen)

    def __repr__(self) -> str:
        return f"<KafkaTransport {self.endpoint.display()} prefix={self.options.prefix!r}>"

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    def topic(self, topic: str) -> str:
        return topic_name(self.options.prefix, topic)

    def state_topic(self, group: str) -> str:
        """The compacted topic of ``group``'s delivery records (``..`` is in no event topic)."""
        return topic_name(self.options.prefix, f".deliveries.{_group_token(group)}")

    def group_id(self, group: str) -> str:
        return f"{self.options.prefix}.{group}"

    # -- connecting -------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._ready()

    async def _ready(self) -> Any:
        if self._closed:
            raise TransportError(f"{self!r} is closed; make a new one")
        if self._producer is not None:
            return self._producer
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is None:
                await self._start()
        return self._producer

    async def _start(self) -> None:
        chosen = self.options
        try:
            settings = self.endpoint.client_settings(chosen)
        except OSError as error:  # a TLS file that cannot be read
            raise ConfigurationError(f"KafkaTransport TLS settings: {error}") from None
        producer = self.make_producer(settings)
        admin = AIOKafkaAdminClient(
            request_timeout_ms=int(chosen.publish_timeout * 1000), **settings
        )
        try:
            await admin.start()
            try:
                await producer.start()
            except aiokafka.errors.UnknownError as error:
                if not chosen.idempotent:
                    raise
                raise TransportError(
                    f"Kafka at {self.endpoint.display()}: {_IDEMPOTENCE_HINT} ({_describe(error)})"
                ) from None
        except aiokafka.errors.KafkaError as error:
            await _stop(producer, admin)
            raise TransportError(
                f"cannot reach Kafka at {self.endpoint.display()}: {_describe(error)}"
            ) from None
        except BaseException:
            await _stop(producer, admin)
            raise
        self._producer, self._admin = producer, admin

    def make_producer(self, settings: dict[str, Any] | None = None) -> Any:
        """The producer (not started): every in-sync replica confirms (``acks=all``), and
        unless ``idempotent=false`` the broker drops a batch sent twice by its retries."""
        chosen = self.options
        return aiokafka.AIOKafkaProducer(
            acks="all",
            enable_idempotence=chosen.idempotent,
            max_request_size=chosen.max_message_bytes + _RECORD_OVERHEAD,
            request_timeout_ms=int(chosen.publish_timeout * 1000),
            linger_ms=0,
            **(settings if settings is not None else self.endpoint.client_settings(chosen)),
        )

    async def ensure_topics(self, names: Sequence[str], *, deliveries: bool = False) -> None:
        """Make the topics that do not exist yet (``deliveries``: the compacted one-partition
        topic of a group's delivery records)."""
        missing = [n for n in names if n not in self._topics]
        if not missing:
            return
        await self._ready()
        chosen = self.options
        configs: dict[str, str] = {}
        if chosen.replication >= 3:
            configs["min.insync.replicas"] = "2"
        if deliveries:
            configs["cleanup.policy"] = "compact"
        topics = [
            NewTopic(
                name,
                1 if deliveries else chosen.partitions,
                chosen.replication,
                topic_configs=configs or None,
            )
            for name in missing
        ]
        try:
            response = await self._admin.create_topics(topics)
        except aiokafka.errors.KafkaError as error:
            raise TransportError(
                f"cannot make the Kafka topics {missing}: {_describe(error)}"
            ) from None
        for name, code, message in (tuple(e)[:3] for e in response.topic_errors):
            if code not in (0, _TOPIC_EXISTS):
                raise ConfigurationError(
                    f"Kafka refused to make the topic {name!r} with {chosen.partitions} "
                    f"partitions and replication={chosen.replication}: {message} (error {code}); "
                    "a single broker takes replication=1, or make the topic yourself"
                )
        self._topics.update(missing)

    # -- publishing ---------------------------------------------------------------------

    async def publish(self, topic: str, /, *messages: Message) -> None:
        if self._closed or self._closing:
            raise TransportError(f"{self!r} is closed; make a new one")
        if not is_topic(topic):
            raise MessageRejectedError(
                f"{topic!r} is not a topic: dot-separated words of letters, digits, '_', '-'"
            )
        for message in messages:
            if not isinstance(message, Message) or message.topic != topic:
                raise TransportError(
                    f"publish({topic!r}, ...) takes Messages of that topic, got {message!r}"
                )
        if not messages:
            return
        limit = self.options.max_message_bytes
        for message in messages:
            size = len(message.body) + 2 * len((message.key or "").encode()) + 36
            if size > limit:
                raise MessageRejectedError(
                    f"message {message.id} on {topic!r} is {size} bytes with its key and "
                    f"headers; this transport sends at most {limit} (max_message_bytes, "
                    "which must not exceed the broker's message.max.bytes)"
                )
        name = self.topic(topic)
        await self.ensure_topics([name])
        producer = await self._ready()
        try:
            async with asyncio.timeout(self.options.publish_timeout):
                futures = []
                for message in messages:
                    key = message.key.encode() if message.key is not None else None
                    headers = [(ID_HEADER, str(message.id).encode())]
                    if key is not None:
                        headers.append((KEY_HEADER, key))
                    futures.append(
                        await producer.send(name, message.body, key=key, headers=headers)
                    )
                await asyncio.gather(*futures)
        except TimeoutError:
            raise TransportError(
                f"Kafka did not confirm {len(messages)} messages on {name!r} within "
                f"{self.options.publish_timeout} s; they may or may not be stored"
            ) from None
        except (
            aiokafka.errors.MessageSizeTooLargeError,
            aiokafka.errors.RecordTooLargeError,
        ) as error:
            raise MessageRejectedError(
                f"Kafka refused a message on {name!r} as too large: {_describe(error)}"
            ) from None
        except aiokafka.errors.KafkaError as error:
            raise TransportError(
                f"Kafka publish of {len(messages)} messages on {name!r} failed, unconfirmed: "
                f"{_describe(error)}"
            ) from None

    async def write_record(self, topic: str, key: str, record: HandOut) -> None:
        """Write a delivery record and wait until the broker has it (``acks=all``)."""
        await self.ensure_topics([topic], deliveries=True)
        producer = await self._ready()
        try:
            async with asyncio.timeout(self.options.publish_timeout):
                await producer.send_and_wait(topic, record.encode(), key=key.encode())
        except TimeoutError:
            raise TransportError(f"Kafka did not confirm a delivery record on {topic!r}") from None
        except aiokafka.errors.KafkaError as error:
            raise TransportError(
                f"cannot write a delivery record on {topic!r}: {_describe(error)}"
            ) from None

    # -- consuming ----------------------------------------------------------------------

    def subscribe(self, topics: Sequence[str], /, *, group: str) -> AsyncIterator[Received]:
        return self._consume(topics, group)

    async def _consume(self, topics: Sequence[str], group: str) -> AsyncIterator[Received]:
        if self._closed or self._closing:
            raise TransportError(f"{self!r} is closed; make a new one")
        if isinstance(topics, str) or not isinstance(topics, Sequence) or not topics:
            raise ConfigurationError(
                f"subscribe takes a non-empty sequence of topics, like ['orders.placed'], "
                f"got {topics!r}"
            )
        for topic in topics:
            if not is_topic(topic):
                raise ConfigurationError(
                    f"{topic!r} is not a topic: dot-separated words of letters, digits, '_', '-'"
                )
        if not isinstance(group, str) or not group:
            raise ConfigurationError(f"group must be a non-empty string, got {group!r}")
        wanted = list(dict.fromkeys(topics))
        subscription = _Subscription(self, wanted, group)
        self._subscriptions.add(subscription)
        try:
            await self.ensure_topics(list(subscription.topics))
            await self.ensure_topics([subscription.state_topic], deliveries=True)
            await subscription.open()
            while not self.closed:
                try:
                    received = await subscription.next()
                except Exception:
                    if subscription.closed or self.closed:
                        break  # the transport was closed under it: the iteration ends
                    raise
                if subscription.closed:
                    break  # closed with the transport while it waited
                yield received
        finally:
            self._subscriptions.discard(subscription)
            await subscription.close()

    async def aclose(self) -> None:
        """End the subscriptions (each hands its partitions over: commits and leaves its
        records, with the producer still open), then close the clients."""
        if self._closed:
            return
        self._closing = True
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._closed = True
        producer, admin = self._producer, self._admin
        self._producer = self._admin = None
        await _stop(producer, admin)


async def _stop(*clients: Any) -> None:
    for client in clients:
        if client is None:
            continue
        with contextlib.suppress(Exception):
            await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())
