"""Transports carry envelopes between processes; chosen by a URL, never by code.

``memory://`` is built in (and the reference); ``redis://``, ``amqp://``, ``nats://`` and
``kafka://`` resolve through the alias table to ``eventbus_contrib`` modules, imported only
when a URL uses them. Third-party transports register in the entry-point group
``eventbus.transports``; they are written against ``eventbus.typing.Transport`` with the
values here (``Message``, ``Capabilities``), ``url_options`` for their URLs and
``Backoff`` for their reconnection waits.
"""

from __future__ import annotations

from .._records import Capabilities, Message
from .._retry import Backoff
from ._memory import MemoryTransport
from ._options import url_options
from ._resolve import ENTRY_POINT_GROUP, transport_class, transport_from_url

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backoff",
    "Capabilities",
    "MemoryTransport",
    "Message",
    "transport_class",
    "transport_from_url",
    "url_options",
]
