"""The facts the notifications module publishes."""

from __future__ import annotations

import eventbus

__all__ = ["EmailSent"]


@eventbus.event("shop.email_sent")
class EmailSent:
    order_id: str
    recipient: str
    subject: str
