"""Apache Kafka (and Redpanda) as an eventbus transport: ``kafka://`` and ``kafkas://``.

``pip install "eventbus[kafka]"`` (aiokafka). See ``KafkaTransport`` for the URL, the
options and what it promises.
"""

from ._transport import KafkaTransport

__all__ = ["KafkaTransport"]
