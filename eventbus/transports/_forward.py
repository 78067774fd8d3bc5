"""The forwarder: the relay's sink for a bus with a transport (Watermill's forwarder).

With a transport configured, a durable publish writes one outbox row per event for the
destination ``FORWARD`` (not one per handler: the handlers may live in other processes),
and the relay hands such rows here. They are published per topic (the event's name), as
the bytes the codec wrote at publish time, never decoded, and completed only once the
broker confirmed them; a failure keeps them for a later try, with a growing delay, and
never buries them, except a message the broker will never take
(``MessageRejectedError``), which becomes a dead letter. Rows for a handler (written
before the bus had a transport) go to the sink for this process's handlers.

``outbox_relayed`` names envelopes: the forwarded rows are decoded for it only while a
receiver of this bus's hook is connected, so with none the forwarder never decodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .. import hooks
from .._delivery import bury
from .._records import FORWARD, DeadLetter, Message, envelope_uuid, first_failure
from .._redact import describe_error, masked_logger
from .._retry import Backoff
from ..errors import MessageRejectedError
from ..outbox._local import RUN_LENGTH
from ..outbox._relay import Batch, Retry

if TYPE_CHECKING:
    from .._context import Context
    from .._envelope import Envelope
    from .._records import ClaimedRow
    from ..outbox._relay import Sink
    from ..typing import Transport
    from ._link import TransportLink

__all__ = ["Forwarder"]

logger = masked_logger("eventbus.transport")

_HELD_BACK = "held back: an earlier outbox row of its key was not confirmed by the broker"

_UNCONFIRMED = Backoff(first=0.2, cap=30.0, jitter=0.5)
"""The wait before the next try of a row the broker did not confirm: 0.2 s doubling to
30 s, with jitter so relays do not retry in step."""


@attrs.define(eq=False)
class _ForwardBatch(Batch):
    forward: list[ClaimedRow] = attrs.Factory(list)
    """Rows bound for the transport: published, then completed, on the loop."""
    sent: list[ClaimedRow] = attrs.Factory(list)
    """Rows the broker confirmed."""
    local: Batch | None = None
    """The other rows, as the local sink took them."""


class Forwarder:
    """Publishes outbox rows to the transport of ``link`` (a relay's sink); rows for a
    handler go to ``local``."""

    def __init__(self, link: TransportLink, context: Context, local: Sink) -> None:
        self._link = link
        self._context = context
        self._local = local

    @property
    def per_key(self) -> int:
        """Several rows of a key per claim only where the transport keeps a batch's order
        when part of it fails (``Capabilities.ordered_batches``): elsewhere a later row
        could reach the broker while an earlier one was refused, and the next row of a
        key is claimed only once the broker confirmed the one before."""
        if self._link.transport.capabilities.ordered_batches:
            return min(self._local.per_key, RUN_LENGTH)
        return 1

    def take(self, rows: list[ClaimedRow]) -> Batch:
        """On the worker thread: set the transport's rows aside for the loop; the local
        sink takes the others."""
        forward = [row for row in rows if row.destination == FORWARD]
        if not forward:
            return self._local.take(rows)
        others = [row for row in rows if row.destination != FORWARD]
        local = self._local.take(others) if others else None
        return _ForwardBatch(rows, left=True, forward=forward, local=local)

    async def finish(self, batch: Batch) -> None:
        """Publish the transport's rows (the confirmed ones are finished), then let the
        local sink finish its own."""
        if not isinstance(batch, _ForwardBatch):
            await self._local.finish(batch)
            return
        await self._publish(batch)
        batch.finished.extend(row.id for row in batch.sent)
        local = batch.local
        if local is not None:
            await self._local.finish(local)
            batch.finished.extend(local.finished)
            batch.processed.extend(local.processed)
            batch.retries.extend(local.retries)

    def relayed(self, batch: Batch) -> None:
        """``outbox_relayed`` for the published rows (decoded only for a receiver)."""
        if not isinstance(batch, _ForwardBatch):
            self._local.relayed(batch)
            return
        sender = self._context.sender
        if batch.sent and hooks._heard(hooks.outbox_relayed, sender):
            envelopes = self._decoded(batch.sent)
            if envelopes:
                hooks._send(hooks.outbox_relayed, sender, envelopes=envelopes)
        if batch.local is not None:
            self._local.relayed(batch.local)

    def _decoded(self, rows: list[ClaimedRow]) -> tuple[Envelope, ...]:
        decode = self._context.codec.decode
        envelopes: list[Envelope] = []
        for row in rows:
            try:
                envelopes.append(decode(row.payload))
            except Exception:  # noqa: S112 - the hook sees what can be decoded
                continue
        return tuple(envelopes)

    async def _publish(self, batch: _ForwardBatch) -> None:
        """Publish per topic; what the broker did not confirm is retried later. Where a
        claim gave runs (several rows of a key), a key whose row was not confirmed has its
        later rows held back, whatever their topic."""
        by_topic: dict[str, list[ClaimedRow]] = {}
        for row in batch.forward:
            by_topic.setdefault(row.name, []).append(row)
        link = self._link
        await link.worker_declared()
        try:
            transport = await link.ready()
        except Exception as error:
            _unconfirmed(batch, batch.forward, error)
            return
        failed: set[str] = set()
        """Keys with a row the broker did not confirm."""
        for topic, claimed in by_topic.items():
            rows = _hold_back(batch, claimed, failed) if failed else claimed
            if not rows:
                continue
            try:
                await transport.publish(topic, *(_message(row) for row in rows))
            except MessageRejectedError:
                await self._isolate(transport, rows, batch, failed)
            except Exception as error:
                _unconfirmed(batch, rows, error)
                failed.update(row.key for row in rows if row.key is not None)
            else:
                batch.sent.extend(rows)

    async def _isolate(
        self, transport: Transport, rows: list[ClaimedRow], batch: _ForwardBatch, failed: set[str]
    ) -> None:
        """A batch the broker refused: publish one by one, so only the poison is buried."""
        for row in rows:
            if failed and row.key in failed:
                batch.retries.append(_held_back(row))
                continue
            try:
                await transport.publish(row.name, _message(row))
            except MessageRejectedError as error:
                if await self._bury(row, error):
                    batch.finished.append(row.id)
                else:  # the letter could not be stored: the row stays, for a later try
                    _unconfirmed(batch, [row], error)
                    if row.key is not None:
                        failed.add(row.key)
            except Exception as error:
                _unconfirmed(batch, [row], error)
                if row.key is not None:
                    failed.add(row.key)
            else:
                batch.sent.append(row)

    async def _bury(self, row: ClaimedRow, error: MessageRejectedError) -> bool:
        """Keep a row the broker refused for good as a dead letter; whether it was kept."""
        letter = DeadLetter.raw(
            payload=row.payload,
            envelope_id=row.envelope_id,
            event_name=row.name,
            handler=FORWARD,
            error=error,
            attempts=row.attempts + 1,
            first_failed_at=first_failure(row),
        )
        try:
            await bury(self._context, letter)
        except Exception:  # logged by bury()
            return False
        return True


def _unconfirmed(batch: Batch, rows: list[ClaimedRow], error: BaseException) -> None:
    """Keep rows the broker did not confirm, for a later try (not one drain waits for)."""
    text = describe_error(error)
    logger.warning(
        "the transport did not confirm %d outbox rows (%s); they are kept and retried",
        len(rows),
        text,
    )
    batch.retries.extend(
        Retry(row, text, _UNCONFIRMED.delay(row.attempts), waited=False) for row in rows
    )


def _hold_back(batch: Batch, rows: list[ClaimedRow], failed: set[str]) -> list[ClaimedRow]:
    """The rows to publish; those of a key in ``failed`` are put back uncounted (the claim
    invariant keeps them until the key's unconfirmed row is gone)."""
    kept: list[ClaimedRow] = []
    for row in rows:
        if row.key in failed:
            batch.retries.append(_held_back(row))
        else:
            kept.append(row)
    return kept


def _held_back(row: ClaimedRow) -> Retry:
    return Retry(row, _HELD_BACK, 0.0, count_attempt=False, waited=False)


def _message(row: ClaimedRow) -> Message:
    return Message(envelope_uuid(row), row[2], row[4], row[5])
