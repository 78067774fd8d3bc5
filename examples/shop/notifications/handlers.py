"""The notifications module's handlers: one email per confirmed or cancelled order."""

from __future__ import annotations

import tenacity

from eventbus import EventBus, RetryPolicy

from ..orders.events import OrderCancelled, OrderConfirmed
from .events import EmailSent
from .mail_server import MailServer, MailServerBusyError, Message
from .templates import Templates

__all__ = ["MAIL_RETRY", "Notifications"]

MAIL_RETRY = RetryPolicy(
    # Greylisting servers accept a retry after a short while; give up after a minute.
    stop=tenacity.stop_after_attempt(6) | tenacity.stop_after_delay(60),
    wait=tenacity.wait_exponential(multiplier=0.2, max=10) + tenacity.wait_random(0, 0.1),
    # Only the server's temporary refusals are worth another try. A missing template
    # fails the same way every time: straight to the dead letters, to be replayed.
    retry_on=(MailServerBusyError,),
)


class Notifications:
    def __init__(self, bus: EventBus, mail: MailServer, templates: Templates) -> None:
        self._bus = bus
        self._mail = mail
        self._templates = templates

    def subscribe(self) -> None:
        bus = self._bus
        for handler, name in (
            (self.send_confirmation, "notifications.send_confirmation"),
            (self.send_cancellation, "notifications.send_cancellation"),
        ):
            bus.subscribe(handler, name=name, delivery="durable", retry=MAIL_RETRY)

    def send_confirmation(self, event: OrderConfirmed) -> None:
        self._send("order_confirmed", event.order_id, event.customer)

    def send_cancellation(self, event: OrderCancelled) -> None:
        self._send("order_cancelled", event.order_id, event.customer, reason=event.reason)

    def _send(self, template: str, order_id: str, recipient: str, **values: str) -> None:
        rendered = self._templates.render(template, order_id=order_id, **values)
        # At least once: a delivery may run again after a crash. The Message-ID is the
        # idempotency key (one per order and template), which the mail server dedups on.
        self._mail.submit(
            Message(
                message_id=f"<{order_id}.{template}@shop.example>",
                recipient=recipient,
                subject=rendered.subject,
                body=rendered.body,
            )
        )
        self._bus.publish(
            EmailSent(order_id=order_id, recipient=recipient, subject=rendered.subject),
            key=order_id,
        )
