"""The per-handler pipeline for work that is not inline: attempt, retry, dead-letter, hooks.

One delivery is one handler and one envelope. It runs on the bus's runtime, so a retrying
handler waits on the loop without holding up other handlers or events (beyond the
runtime's concurrency), and its failures never reach the publisher.
"""

from __future__ import annotations

import enum
import inspect
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs

from . import hooks
from ._causation import current_frame
from ._scope import Scope, current_scope
from .deadletters import DeadLetter
from .errors import EncodeError, RejectEvent, SkipEvent

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._bus import EventBus
    from ._envelope import Envelope
    from ._handlers import Handler

__all__ = ["Attempted", "Outcome", "attempt", "call_in_transaction", "deliver"]

logger = logging.getLogger("eventbus.delivery")


class Outcome(enum.Enum):
    """How a delivery ended."""

    HANDLED = "handled"
    SKIPPED = "skipped"
    """The handler raised SkipEvent: nothing to do, counts as handled."""
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


async def attempt(
    bus: EventBus,
    handler: Handler,
    envelope: Envelope,
    *,
    call: Callable[[], Awaitable[None]] | None = None,
) -> Attempted:
    """Run ``handler`` until it succeeds or its policy gives up; send the hooks.

    ``call`` runs one attempt, when calling the handler takes more than calling it (a
    connection-taking handler runs in a transaction with its inbox mark).
    """
    started = time.monotonic()
    idle = 0.0
    first_failed_at: datetime | None = None
    number = 0
    while True:
        number += 1
        try:
            await (_call(bus, handler, envelope) if call is None else call())
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
            hooks._send(hooks.event_handled, bus, envelope=envelope, handler=handler.name)
            return Attempted(Outcome.HANDLED, number, None, first_failed_at)


async def deliver(bus: EventBus, handler: Handler, envelope: Envelope) -> Outcome:
    """Attempt the delivery; when the policy gives up, write a dead letter."""
    result = await attempt(bus, handler, envelope)
    if result.outcome is not Outcome.FAILED:
        return result.outcome
    error = result.error
    assert error is not None
    await dead_letter(bus, handler, envelope, error, result)
    return Outcome.DEAD_LETTERED


async def dead_letter(
    bus: EventBus, handler: Handler, envelope: Envelope, error: BaseException, result: Attempted
) -> None:
    """Keep ``envelope`` with the error, then tell the hooks; never raises."""
    try:
        letter = DeadLetter.from_failure(
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempts=result.attempts,
            first_failed_at=result.first_failed_at or datetime.now(UTC),
            codec=bus.codec,
        )
    except EncodeError:
        logger.exception(
            "cannot encode envelope %s (%s) for the dead letters of %s; it is logged here only",
            envelope.id,
            envelope.name,
            handler.name,
        )
        letter = None
    if letter is not None:
        try:
            await bus._runtime.run_sync(bus.dead_letters.add, letter)
        except Exception:
            logger.critical(
                "could not store the dead letter of envelope %s (%s) for %s: %r",
                envelope.id,
                envelope.name,
                handler.name,
                envelope,
                exc_info=True,
            )
    if isinstance(error, RejectEvent):
        logger.info("%s rejected %s (%s): %s", handler.name, envelope.name, envelope.id, error)
    else:
        logger.error(
            "%s gave up on %s (%s) after %d attempts: %r",
            handler.name,
            envelope.name,
            envelope.id,
            result.attempts,
            error,
        )
    hooks._send(
        hooks.event_dead_lettered,
        bus,
        envelope=envelope,
        handler=handler.name,
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


def call_in_transaction(bus: EventBus, handler: Handler, envelope: Envelope) -> None:
    """Run a connection-taking handler in a transaction of its own with its inbox mark.

    Its effects and the mark commit together (exactly once); a duplicate finds the mark
    and runs nothing. What the handler publishes belongs to that transaction too: its
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
                return  # a duplicate: done before, with its effects, in one commit
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
