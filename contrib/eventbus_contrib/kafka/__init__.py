"""Apache Kafka (and Redpanda) as an eventbus transport: ``kafka://`` and ``kafkas://``.

``pip install "eventbus[kafka]"`` (aiokafka). The URL, the options and what it promises are
in README.md, "Going distributed > Kafka"; the design is in ``_transport``'s docstring.
"""

from ._transport import KafkaTransport

__all__ = ["KafkaTransport"]
