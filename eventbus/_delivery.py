"""The per-handler pipeline for work that is not inline: attempt, retry, dead-letter, hooks.

One delivery is one handler and one envelope. It runs on the bus's runtime, so a retrying
handler waits on the loop without holding up other handlers or events (beyond the
runtime's concurrency), and its failures never reach the publisher.

Two things here are the only way to do them, whoever asks (in-process deliveries, the
relay, the worker, replays):

- ``run_handler`` is the per-handler step: a handler that takes a connection runs in a
  transaction of its own with its inbox mark (exactly once); any other is called.
- ``bury`` keeps a dead letter: it stores it, logs it and tells the hooks.
"""

from __future__ import annotations

import enum
import inspect
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import hooks
from ._causation import current_frame
from ._redact import masked_logger
from ._scope import Scope, current_scope
from .deadletters import DeadLetter
from .errors import EncodeError, RejectEvent, SkipEvent

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._envelope import Envelope
    from ._handlers import Handler

__all__ = [
    "Attempted",
    "Outcome",
    "attempt",
    "bury",
    "call_in_transaction",
    "dead_letter",
    "deliver",
    "run_handler",
]

logger = masked_logger("eventbus.delivery")


class Outcome(enum.Enum):
    """How a delivery ended."""

    HANDLED = "handled"
    SKIPPED = "skipped"
    """The handler raised SkipEvent: nothing to do, counts as handled."""
    DUPLICATE = "duplicate"
    """The handler's inbox held the envelope: its effects were committed before, with the
    mark, so nothing ran (connection-taking handlers only)."""
    FAILED = "failed"
    """The policy gave up (or the handler rejected the event)."""
    DEAD_LETTERED = "dead_lettered"


@attrs.frozen
class Attempted:
    """The result of running one handler on one envelope under its retry policy."""

    outcome: Outcome
    attempts: int
    error: BaseException | None = None
    first_failed_at: datetime | None = None


def after_failure(
    bus: EventBus,
    handler: Handler,
    envelope: Envelope,
    error: Exception,
    *,
    attempt: int,
    elapsed: float,
    idle: float = 0.0,
) -> float | None:
    """Report a failed attempt to the hooks; the wait before the next one, or None.

    The one place that asks the handler's policy (its own, else the bus's), for
    in-process retries and for the relay's durable ones alike.
    """
    hooks._send(hooks.handler_failed, bus, envelope=envelope, handler=handler.name, error=error)
    policy = handler.retry or bus.retry_policy
    delay = policy.next_delay(attempt=attempt, error=error, elapsed=elapsed, idle=idle)
    if delay is not None:
        hooks._send(
            hooks.handler_retrying,
            bus,
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempt=attempt,
            delay=delay,
        )
    return delay


async def run_handler(bus: EventBus, handler: Handler, envelope: Envelope) -> bool:
    """Run ``handler`` on ``envelope`` once, the way every delivery does; whether it ran.

    A handler that takes a connection (or session) runs in a transaction of its own in
    which its inbox mark is written: False when the mark was there already (its effects
    were committed before, so nothing ran). Any other handler is called, always.
    """
    if handler.wants_connection:
        ran: bool = await bus._runtime.run_sync(call_in_transaction, bus, handler, envelope)
        return ran
    await _call(bus, handler, envelope)
    return True


async def attempt(bus: EventBus, handler: Handler, envelope: Envelope) -> Attempted:
    """Run ``handler`` until it succeeds or its policy gives up; send the hooks."""
    started = time.monotonic()
    idle = 0.0
    first_failed_at: datetime | None = None
    number = 0
    while True:
        number += 1
        try:
            ran = await run_handler(bus, handler, envelope)
        except SkipEvent:
            hooks._send(hooks.event_handled, bus, envelope=envelope, handler=handler.name)
            return Attempted(Outcome.SKIPPED, number, None, first_failed_at)
        except Exception as error:
            first_failed_at = first_failed_at or datetime.now(UTC)
            delay = after_failure(
                bus,
                handler,
                envelope,
                error,
                attempt=number,
                elapsed=time.monotonic() - started,
                idle=idle,
            )
            if delay is None:
                return Attempted(Outcome.FAILED, number, error, first_failed_at)
            await bus._runtime.sleep(delay)
            idle += delay
        else:
            if not ran:
                return Attempted(Outcome.DUPLICATE, number, None, first_failed_at)
            hooks._send(hooks.event_handled, bus, envelope=envelope, handler=handler.name)
            return Attempted(Outcome.HANDLED, number, None, first_failed_at)


async def deliver(bus: EventBus, handler: Handler, envelope: Envelope) -> Outcome:
    """Attempt the delivery; when the policy gives up, write a dead letter.

    In process, nothing else holds the envelope: a letter that cannot be stored is
    logged (with the envelope) and the delivery ends.
    """
    result = await attempt(bus, handler, envelope)
    if result.outcome is not Outcome.FAILED:
        return result.outcome
    error = result.error
    assert error is not None
    try:
        await dead_letter(
            bus,
            handler,
            envelope,
            error,
            attempts=result.attempts,
            first_failed_at=result.first_failed_at,
        )
    except Exception:
        logger.critical(
            "the dead letter of envelope %s (%s) for %s is logged here only: %r",
            envelope.id,
            envelope.name,
            handler.name,
            envelope,
        )
        hooks._send(
            hooks.event_dead_lettered,
            bus,
            envelope=envelope,
            handler=handler.name,
            error=error,
            letter=None,
        )
    return Outcome.DEAD_LETTERED


async def dead_letter(
    bus: EventBus,
    handler: Handler,
    envelope: Envelope,
    error: BaseException,
    *,
    attempts: int,
    first_failed_at: datetime | None,
    payload: bytes | None = None,
) -> DeadLetter | None:
    """Keep ``envelope`` as the dead letter of ``handler``, which gave up with ``error``.

    ``payload``: the envelope as it was stored (an outbox row's bytes), used when the
    envelope cannot be encoded again. Raises when the store fails (see ``bury``); None
    when there is nothing to store (an envelope that cannot be encoded at all: logged).
    """
    try:
        letter = DeadLetter.from_failure(
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempts=attempts,
            first_failed_at=first_failed_at or datetime.now(UTC),
            codec=bus.codec,
            payload=payload,
        )
    except EncodeError:
        logger.exception(
            "cannot encode envelope %s (%s) for the dead letters of %s; it is logged here only",
            envelope.id,
            envelope.name,
            handler.name,
        )
        hooks._send(
            hooks.event_dead_lettered,
            bus,
            envelope=envelope,
            handler=handler.name,
            error=error,
            letter=None,
        )
        return None
    await bury(bus, letter, envelope=envelope, error=error)
    return letter


async def bury(
    bus: EventBus,
    letter: DeadLetter,
    *,
    envelope: Envelope | None = None,
    error: BaseException | None = None,
) -> None:
    """Keep ``letter``: store it, log it, and (for a handler that gave up on a decoded
    ``envelope`` with ``error``) send ``event_dead_lettered``.

    Every dead letter goes through here. When the store fails, that is logged (critical)
    and raised: the caller still holds the message (an outbox row, a broker message) and
    keeps it, to try again, rather than drop it.
    """
    try:
        await bus._runtime.run_sync(bus.dead_letters.add, letter)
    except Exception:
        logger.critical(
            "could not store dead letter %s (%s gave up on %s, envelope %s: %s: %s)",
            letter.id,
            letter.handler,
            letter.event_name,
            letter.envelope_id,
            letter.error_type,
            letter.message,
            exc_info=True,
        )
        raise
    if isinstance(error, RejectEvent):
        logger.info(
            "%s rejected %s (envelope %s): %s; kept as dead letter %s",
            letter.handler,
            letter.event_name,
            letter.envelope_id,
            letter.message,
            letter.id,
        )
    else:
        logger.error(
            "%s gave up on %s (envelope %s) after %d attempt%s: %s: %s; kept as dead letter %s",
            letter.handler,
            letter.event_name,
            letter.envelope_id,
            letter.attempts,
            "" if letter.attempts == 1 else "s",
            letter.error_type,
            letter.message,
            letter.id,
        )
    if envelope is not None and error is not None:
        hooks._send(
            hooks.event_dead_lettered,
            bus,
            envelope=envelope,
            handler=letter.handler,
            error=error,
            letter=letter,
        )


async def _call(bus: EventBus, handler: Handler, envelope: Envelope) -> None:
    """Call the handler with the envelope as the current cause of nested publishes."""
    args: tuple[Any, ...] = (
        (envelope.event, envelope) if handler.wants_envelope else (envelope.event,)
    )
    # A frame whose envelope is already built: nested publishes link to this envelope.
    token = current_frame.set([envelope.event, None, None, envelope])
    try:
        if handler.is_async:
            await handler.fn(*args)
            return
        result = await bus._runtime.run_sync(handler.fn, *args)
        if inspect.isawaitable(result):
            await result
    finally:
        current_frame.reset(token)


def call_in_transaction(bus: EventBus, handler: Handler, envelope: Envelope) -> bool:
    """Run a connection-taking handler in a transaction of its own with its inbox mark;
    whether it ran.

    Its effects and the mark commit together (exactly once); a duplicate finds the mark
    and runs nothing (False). What the handler publishes belongs to that transaction too: its
    durable rows are written in it and its after-commit handlers wait for its commit, so
    a follow-up event is published exactly when the effects are. Sync: call it on a
    worker thread.
    """
    outbox = bus.outbox
    assert outbox is not None  # subscribe() refuses a connection-taking handler without one
    token = current_frame.set([envelope.event, None, None, envelope])
    try:
        with outbox.handler_transaction() as connection:
            if not outbox.mark(handler.name, envelope.id, connection):
                return False  # a duplicate: done before, with its effects, in one commit
            args: tuple[Any, ...] = (envelope.event,)
            if handler.wants_envelope:
                args = (*args, envelope)
            scope = Scope(bus, connection)
            scope_token = current_scope.set(scope)
            try:
                handler.fn(*args, connection)
                if scope.rows:
                    outbox.write(connection, scope.rows)
            finally:
                current_scope.reset(scope_token)
        callbacks = scope.committed()
    finally:
        current_frame.reset(token)
    for callback in callbacks:
        callback()
    return True
