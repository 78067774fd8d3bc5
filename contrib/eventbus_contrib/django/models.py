"""The tables of the outbox, the inbox and the dead letters, as Django models.

The stores read and write them with SQL of their own (``_sql``), not through these
models: a claim needs ``FOR UPDATE SKIP LOCKED`` and ``UPDATE ... RETURNING``, which the
ORM cannot say. The models are here so that the app's migration creates the tables,
``TransactionTestCase`` empties them between tests like every other table, and tests
and the admin can read them (``OutboxRow.objects.filter(name="shop.order_placed")``,
also inside a ``TestCase``'s transaction, where the relay cannot see them yet).

The columns are those of the other stores (unix seconds as doubles from the database's
clock, payloads as bytes). The inbox has a surrogate ``id`` beside its unique
(handler, envelope_id): Django before 5.2 has no composite primary key.
"""

from __future__ import annotations

from django.db import models

__all__ = ["DeadLetterRow", "InboxMark", "OutboxRow"]


class OutboxRow(models.Model):  # type: ignore[misc] # Django ships no types
    """A durable event waiting to be delivered to one destination (a handler, or the
    transport)."""

    id = models.BigAutoField(primary_key=True)
    envelope_id = models.CharField(max_length=36)
    name = models.CharField(max_length=200)
    destination = models.CharField(max_length=200)
    key = models.CharField(max_length=1024, null=True)  # noqa: DJ001 - None: no ordering key
    payload = models.BinaryField()
    created_at = models.FloatField()
    available_at = models.FloatField()
    attempts = models.IntegerField(default=0)
    lease_owner = models.CharField(max_length=200, null=True)  # noqa: DJ001 - None: unleased
    lease_until = models.FloatField(null=True)
    last_error = models.TextField(null=True)  # noqa: DJ001 - None: never failed
    first_failed_at = models.FloatField(null=True)

    class Meta:
        db_table = "eventbus_outbox"
        indexes = (
            models.Index(fields=["available_at", "id"], name="eventbus_outbox_available"),
            models.Index(fields=["destination", "key", "id"], name="eventbus_outbox_key"),
        )

    def __str__(self) -> str:
        return f"{self.name} for {self.destination} ({self.envelope_id})"


class InboxMark(models.Model):  # type: ignore[misc]
    """That a handler processed an envelope (effectively-once delivery)."""

    id = models.BigAutoField(primary_key=True)
    handler = models.CharField(max_length=200)
    envelope_id = models.CharField(max_length=36)
    processed_at = models.FloatField()

    class Meta:
        db_table = "eventbus_inbox"
        constraints = (
            models.UniqueConstraint(fields=["handler", "envelope_id"], name="eventbus_inbox_mark"),
        )

    def __str__(self) -> str:
        return f"{self.handler} processed {self.envelope_id}"


class DeadLetterRow(models.Model):  # type: ignore[misc]
    """An envelope a handler gave up on (``eventbus.DeadLetter``): times are kept as
    ISO-8601 text in UTC (exact) and as unix seconds (``*_ts``, which filter and sort)."""

    id = models.CharField(max_length=36, primary_key=True)
    envelope_id = models.CharField(max_length=36)
    event_name = models.TextField()
    handler = models.TextField()
    error_type = models.TextField()
    message = models.TextField()
    traceback = models.TextField()
    attempts = models.IntegerField()
    first_failed_at = models.TextField()
    first_failed_ts = models.FloatField()
    last_failed_at = models.TextField()
    last_failed_ts = models.FloatField()
    payload = models.BinaryField()
    claim_owner = models.TextField(null=True)  # noqa: DJ001 - None: not being replayed
    claim_until = models.FloatField(null=True)

    class Meta:
        db_table = "eventbus_dead_letters"
        indexes = (
            models.Index(fields=["handler", "last_failed_ts"], name="eventbus_dl_handler"),
            models.Index(fields=["event_name", "last_failed_ts"], name="eventbus_dl_event_name"),
            models.Index(fields=["last_failed_ts", "id"], name="eventbus_dl_last_failed"),
        )

    def __str__(self) -> str:
        return f"{self.handler} gave up on {self.event_name} ({self.envelope_id})"
