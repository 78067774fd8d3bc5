"""What a transport carries and what it promises: messages, received messages, capabilities."""

from __future__ import annotations

import uuid

import attrs

__all__ = ["Capabilities", "Message"]


@attrs.frozen(slots=True)
class Message:
    """An encoded envelope on its way to a broker.

    The relay sends the bytes the codec wrote at publish time (inside the business
    transaction), so nothing is encoded twice and a transport never sees an event object.
    ``id`` is the envelope's id: brokers that deduplicate publishes (JetStream's
    ``Nats-Msg-Id``) use it, so a publish retried after a lost reply is stored once.
    ``key`` is the ordering key, for transports that partition by it.
    """

    id: uuid.UUID
    topic: str
    """The event's wire name: a Redis stream suffix, a RabbitMQ routing key, a NATS subject."""
    key: str | None
    body: bytes = attrs.field(repr=False)


@attrs.frozen(slots=True, kw_only=True)
class Capabilities:
    """What a transport can do; the contract suite switches its tests on these."""

    persistent: bool
    """Messages survive a restart of the broker (within the durability it documents)."""
    ordered_per_key: bool
    """One consumer of a group receives one topic's messages of one key in publish order
    (a partitioned topic, as Kafka's, may interleave different keys)."""
    consumer_groups: bool
    """Consumers sharing a group share the work: each message goes to one of them."""
    counts_deliveries: bool
    """``Received.delivery_count`` is the broker's count, so a message that keeps
    killing its consumer can be dead-lettered past a limit."""
    new_groups_read_history: bool = False
    """A group that subscribes for the first time reads what was published before it
    existed (a Redis group made at id 0, a JetStream consumer delivering everything)."""
    native_dead_letter: bool = False
    """The broker itself moves messages past a delivery limit aside."""
    delayed_redelivery: bool = False
    """``nack`` can ask the broker to redeliver later rather than at once."""
