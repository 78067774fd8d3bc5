"""A stand-in for the SMTP provider the shop sends through.

It behaves like many real ones on two points the shop must cope with:

- **Greylisting.** The first submission of each message is deferred with a temporary
  error (SMTP 451); the same message sent again a moment later is accepted. The shop's
  answer is a retry policy.
- **Message-ID dedup.** A message submitted twice (a retry after a reply that was lost)
  is delivered once; the mailbox counts submissions so the scenario can show it.
"""

from __future__ import annotations

import attrs

from ..db import Database, Row

__all__ = ["MailServer", "MailServerBusyError", "Message"]


class MailServerBusyError(ConnectionError):
    """A temporary refusal (SMTP 4xx): the same message may be sent again later."""


@attrs.frozen
class Message:
    message_id: str
    recipient: str
    subject: str
    body: str


class MailServer:
    def __init__(self, db: Database) -> None:
        self._db = db

    def submit(self, message: Message) -> None:
        with self._db.transaction() as tx:
            first_seen = tx.execute(
                "INSERT INTO mail_greylist (message_id) VALUES (:message_id) "
                "ON CONFLICT (message_id) DO NOTHING",
                message_id=message.message_id,
            )
        if first_seen:
            raise MailServerBusyError(
                f"451 4.7.1 {message.message_id} greylisted: try again in a moment"
            )
        with self._db.transaction() as tx:
            tx.execute(
                "INSERT INTO mailbox (message_id, recipient, subject, body, submissions) "
                "VALUES (:message_id, :recipient, :subject, :body, 1) "
                "ON CONFLICT (message_id) DO UPDATE SET submissions = mailbox.submissions + 1",
                message_id=message.message_id,
                recipient=message.recipient,
                subject=message.subject,
                body=message.body,
            )

    def mailbox(self) -> list[Row]:
        """Every message delivered, with how many times it was submitted."""
        with self._db.connect() as connection:
            return connection.fetch_all(
                "SELECT message_id, recipient, subject, submissions FROM mailbox "
                "ORDER BY message_id"
            )
