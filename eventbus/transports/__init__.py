"""Transports carry envelopes between processes; chosen by a URL, never by code.

``memory://`` is built in (and the reference); ``redis://``, ``amqp://``, ``nats://`` and
``kafka://`` resolve through the alias table to ``eventbus_contrib`` modules, imported only
when a URL uses them. Third-party transports register in the entry-point group
``eventbus.transports``.
"""

from __future__ import annotations

from ._memory import MemoryTransport
from ._message import Capabilities, Message
from ._options import url_options
from ._resolve import ENTRY_POINT_GROUP, transport_class, transport_from_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "MemoryTransport",
    "Message",
    "transport_class",
    "transport_from_url",
    "url_options",
]
