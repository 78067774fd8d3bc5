"""The delivery pipeline: how a handler is called, attempted, retried, dead-lettered, and
replayed, whoever asks (after-commit deliveries, the relay's durable ones, the worker's,
replays of dead letters).

One delivery is one handler and one envelope. It runs on the runtime, so a retrying
handler waits on the loop without holding up other handlers or events (beyond the
runtime's concurrency), and its failures never reach the publisher. Everything here takes
a ``Context`` (``eventbus._context``), never the bus. Each step has one home:

- ``call``/``acall`` call a handler, with its envelope as the cause of what it publishes
  (the inline path of a publish has its own, tuned, inside ``_bus.py``);
- ``run_handler`` is the per-handler step: a handler that takes a connection runs in a
  transaction of its own with its inbox mark (exactly once); any other is called;
- ``Attempts`` counts a handler's attempts and asks its retry policy after a failure,
  telling the hooks (``after_failure``); ``attempt`` is the loop around them;
- ``dead_letter`` and ``bury`` keep a dead letter: stored, logged, the hooks told;
  ``cut_short`` keeps one for an after-commit delivery a stop cancelled;
- ``replay`` runs a dead letter's handler again through the same steps.

Replaying. A replay takes the same per-handler step as the first delivery: a handler that
takes a connection or session runs in a transaction of its own, with its inbox mark, so
its effects and the mark commit together. The mark is honoured: when the inbox holds it,
the handler's effects for that envelope were committed already (by a redelivery, or by an
earlier replay whose letter could not be resolved), so the replay runs nothing and
resolves the letter as ``already_handled``. (A dead-lettered handler never gets the mark:
it is written only with the effects.) Handlers without a connection have no such mark
(they run at least once) and are always run.
"""

from __future__ import annotations

import enum
import inspect
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import attrs

from . import hooks
from ._causation import current_frame
from ._records import FORWARD, DeadLetter
from ._redact import bounded, masked_logger
from .errors import (
    ConfigurationError,
    DeadLetterNotReplayableError,
    DeliveryCancelledError,
    EncodeError,
    RejectEvent,
    ReplayInProgressError,
    SkipEvent,
)

if TYPE_CHECKING:
    from contextvars import Token

    from ._causation import Frame
    from ._context import Context
    from ._envelope import Envelope
    from ._handlers import Handler
    from ._retry import RetryPolicy

__all__ = [
    "Attempted",
    "Attempts",
    "Outcome",
    "ReplayResult",
    "acall",
    "after_failure",
    "attempt",
    "bury",
    "call",
    "cut_short",
    "dead_letter",
    "deliver",
    "replay",
    "run_handler",
]

logger = masked_logger("eventbus.delivery")
replay_logger = masked_logger("eventbus.replay")


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


# -- calling a handler -------------------------------------------------------------------


def _arguments(handler: Handler, envelope: Envelope) -> tuple[Any, ...]:
    return (envelope.event, envelope) if handler.wants_envelope else (envelope.event,)


def _as_cause(envelope: Envelope) -> Token[Frame | None]:
    """Make ``envelope`` the current cause: a frame whose envelope is already built, so
    nested publishes link to it. Returns the token to reset."""
    return current_frame.set([envelope.event, None, None, envelope])


def call(handler: Handler, envelope: Envelope, *extra: Any) -> Any:
    """Call a sync ``handler`` here, on ``envelope`` (and ``extra``: the connection of a
    connection-taking handler), with the envelope as the cause of what it publishes;
    returns what it returned. Call it on a worker thread, never on the loop."""
    token = _as_cause(envelope)
    try:
        return handler.fn(*_arguments(handler, envelope), *extra)
    finally:
        current_frame.reset(token)


async def acall(context: Context, handler: Handler, envelope: Envelope) -> None:
    """Call ``handler`` on ``envelope`` from the loop: an async one awaited there, a sync
    one on a worker thread; the envelope is the cause of what it publishes."""
    token = _as_cause(envelope)
    try:
        if handler.is_async:
            await handler.fn(*_arguments(handler, envelope))
            return
        # The worker thread runs in a copy of this context: the frame travels with it.
        result = await context.runtime.run_sync(handler.fn, *_arguments(handler, envelope))
        if inspect.isawaitable(result):
            await result
    finally:
        current_frame.reset(token)


def call_in_transaction(context: Context, handler: Handler, envelope: Envelope) -> bool:
    """Run a connection-taking handler in a transaction of its own with its inbox mark;
    whether it ran (False: a duplicate, done before with its effects). Sync: call it on a
    worker thread."""
    return context.transactions.handler_transaction(
        handler.name, envelope.id, lambda connection: call(handler, envelope, connection)
    )


async def run_handler(context: Context, handler: Handler, envelope: Envelope) -> bool:
    """Run ``handler`` on ``envelope`` once, the way every delivery does; whether it ran.

    A handler that takes a connection (or session) runs in a transaction of its own in
    which its inbox mark is written: False when the mark was there already (its effects
    were committed before, so nothing ran). Any other handler is called, always.
    """
    if handler.wants_connection:
        ran: bool = await context.runtime.run_sync(call_in_transaction, context, handler, envelope)
        return ran
    await acall(context, handler, envelope)
    return True


# -- attempts and retries ----------------------------------------------------------------


def after_failure(
    sender: object,
    policy: RetryPolicy | None,
    handler: Handler,
    envelope: Envelope | None,
    error: Exception,
    *,
    attempt: int,
    elapsed: float,
    idle: float = 0.0,
) -> float | None:
    """Report a failed attempt to the hooks; the wait before the next one, or None.

    The one place that asks a retry policy, for inline retries, in-process deliveries and
    the relay's durable ones alike. No ``policy``: the failure is final. No ``envelope``:
    nothing observes (the inline path builds none then), so no hook is sent.
    """
    if envelope is not None:
        hooks._send(
            hooks.handler_failed, sender, envelope=envelope, handler=handler.name, error=error
        )
    if policy is None:
        return None
    delay = policy.next_delay(attempt=attempt, error=error, elapsed=elapsed, idle=idle)
    if delay is not None and envelope is not None:
        hooks._send(
            hooks.handler_retrying,
            sender,
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempt=attempt,
            delay=delay,
        )
    return delay


class Attempts:
    """One handler's attempts at one envelope under ``policy``: how many failed, the time
    since the first began (``started``, on the monotonic clock) and the time spent waiting
    between them, and when the first failed.

    Every attempt loop is this and a way to wait: ``failed`` after each failure returns
    the wait before the next try, or None (give up). A loop that rarely fails (an inline
    handler's) makes it only then, with the time its first attempt began.
    """

    __slots__ = ("failures", "first_failed_at", "handler", "idle", "policy", "sender", "started")

    def __init__(
        self,
        sender: object,
        handler: Handler,
        policy: RetryPolicy | None,
        started: float | None = None,
    ) -> None:
        self.sender = sender
        self.handler = handler
        self.policy = policy
        self.failures = 0
        self.started = time.monotonic() if started is None else started
        self.idle = 0.0
        self.first_failed_at: datetime | None = None

    def failed(self, error: Exception, envelope: Envelope | None) -> float | None:
        """Count the failure (the hooks told when there is an ``envelope``); the wait
        before the next attempt, or None to give up."""
        self.failures += 1
        self.first_failed_at = self.first_failed_at or datetime.now(UTC)
        delay = after_failure(
            self.sender,
            self.policy,
            self.handler,
            envelope,
            error,
            attempt=self.failures,
            elapsed=time.monotonic() - self.started,
            idle=self.idle,
        )
        if delay is not None:
            self.idle += delay
        return delay


async def attempt(context: Context, handler: Handler, envelope: Envelope) -> Attempted:
    """Run ``handler`` until it succeeds or its policy (its own, else the context's) gives
    up, waiting on the runtime between attempts; send the hooks."""
    attempts = Attempts(context.sender, handler, handler.retry or context.retry)
    while True:
        try:
            ran = await run_handler(context, handler, envelope)
        except SkipEvent:
            _handled(context, handler, envelope)
            outcome = Outcome.SKIPPED
        except Exception as error:
            delay = attempts.failed(error, envelope)
            if delay is None:
                return Attempted(Outcome.FAILED, attempts.failures, error, attempts.first_failed_at)
            await context.runtime.sleep(delay)
            continue
        else:
            if ran:
                _handled(context, handler, envelope)
            outcome = Outcome.HANDLED if ran else Outcome.DUPLICATE
        return Attempted(outcome, attempts.failures + 1, None, attempts.first_failed_at)


def _handled(context: Context, handler: Handler, envelope: Envelope) -> None:
    hooks._send(hooks.event_handled, context.sender, envelope=envelope, handler=handler.name)


async def deliver(context: Context, handler: Handler, envelope: Envelope) -> Outcome:
    """Attempt the delivery; when the policy gives up, write a dead letter.

    In process, nothing else holds the envelope: a letter that cannot be stored is
    logged (with the envelope) and the delivery ends.
    """
    result = await attempt(context, handler, envelope)
    if result.outcome is not Outcome.FAILED:
        return result.outcome
    error = result.error
    assert error is not None
    try:
        await dead_letter(
            context,
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
        _lost(context, handler, envelope, error)
    return Outcome.DEAD_LETTERED


def _lost(context: Context, handler: Handler, envelope: Envelope, error: BaseException) -> None:
    """``event_dead_lettered`` for a letter that could not be kept (``letter=None``)."""
    hooks._send(
        hooks.event_dead_lettered,
        context.sender,
        envelope=envelope,
        handler=handler.name,
        error=error,
        letter=None,
    )


# -- dead letters ------------------------------------------------------------------------


async def dead_letter(
    context: Context,
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
            codec=context.codec,
            payload=payload,
        )
    except EncodeError:
        logger.exception(
            "cannot encode envelope %s (%s) for the dead letters of %s; it is logged here only",
            envelope.id,
            envelope.name,
            handler.name,
        )
        _lost(context, handler, envelope, error)
        return None
    await bury(context, letter, envelope=envelope, error=error)
    return letter


async def bury(
    context: Context,
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
        await context.runtime.run_sync(context.dead_letters.add, letter)
    except Exception as failure:
        _unstored(letter, failure)
        raise
    _kept(context, letter, envelope=envelope, error=error)


def _unstored(letter: DeadLetter, failure: Exception) -> None:
    logger.critical(
        "could not store dead letter %s (%s gave up on %s, envelope %s: %s: %s)",
        letter.id,
        letter.handler,
        letter.event_name,
        letter.envelope_id,
        letter.error_type,
        letter.message,
        exc_info=failure,
    )


def _kept(
    context: Context,
    letter: DeadLetter,
    *,
    envelope: Envelope | None,
    error: BaseException | None,
) -> None:
    """Log a stored letter and, for a decoded ``envelope``, tell ``event_dead_lettered``."""
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
            context.sender,
            envelope=envelope,
            handler=letter.handler,
            error=error,
            letter=letter,
        )


def cut_short(context: Context, handler: Handler, envelope: Envelope, started: bool) -> None:
    """Keep an after-commit delivery that a stop cancelled as a dead letter.

    Called on the loop as the runtime stops (or the interpreter ends), where the worker
    threads may all be held by the handlers that ran out of time: the store is written
    from here, directly. Nothing else holds the envelope; a letter that cannot be stored
    is logged whole, as ``deliver`` does.
    """
    timeout = context.runtime.shutdown_timeout
    error = DeliveryCancelledError(
        f"{handler.name} did not finish before the bus stopped (shutdown_timeout {timeout}s)"
        + ("; it may have run part way" if started else "; it had not started")
    )
    now = datetime.now(UTC)
    try:
        letter = DeadLetter.from_failure(
            envelope=envelope,
            handler=handler.name,
            error=error,
            attempts=1 if started else 0,
            first_failed_at=now,
            codec=context.codec,
            now=now,
        )
        context.dead_letters.add(letter)
    except Exception:
        logger.critical(
            "the after-commit delivery of envelope %s (%s) to %s was cancelled by the stop "
            "and could not be kept as a dead letter; it is logged here only: %r",
            envelope.id,
            envelope.name,
            handler.name,
            envelope,
            exc_info=True,
        )
        _lost(context, handler, envelope, error)
        return
    _kept(context, letter, envelope=envelope, error=error)


# -- replaying a dead letter -------------------------------------------------------------


@attrs.frozen
class ReplayResult:
    """What one replay did: ``"replayed"`` (the handler ran; the letter is gone),
    ``"already_handled"`` (the handler's inbox says its effects were committed before, so
    nothing ran; the letter is gone) or ``"failed"`` (the letter stays, with the new
    error)."""

    letter_id: uuid.UUID
    handler: str
    outcome: Literal["replayed", "already_handled", "failed"]
    attempts: int
    error: str | None = None
    """The new error, ``Type: message``, when the replay failed."""

    @property
    def ok(self) -> bool:
        """Whether the letter is resolved (replayed, or found already handled)."""
        return self.outcome != "failed"


def _owner() -> str:
    """Who holds a claim: readable in the store, unique per replay."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


async def replay(context: Context, letter_id: uuid.UUID, *, lease: float) -> ReplayResult:
    """Claim the letter, run its handler, then resolve it or store the new failure."""
    store = context.dead_letters
    run = context.runtime.run_sync
    owner = _owner()
    letter = await run(lambda: store.claim(letter_id, owner=owner, lease=lease))
    if letter is None:
        raise ReplayInProgressError(
            f"dead letter {letter_id} is being replayed by someone else right now; "
            "its handler is not run twice"
        )
    try:
        _check_replayable(letter)
        handler = _handler_of(context, letter.handler, letter_id)
        envelope = letter.envelope(context.codec)
        _check_takes(handler, envelope, letter_id)
    except BaseException:
        await run(lambda: store.release(letter_id, owner=owner))
        raise
    result = await attempt(context, handler, envelope)
    if result.outcome in (Outcome.HANDLED, Outcome.SKIPPED, Outcome.DUPLICATE):
        if not await run(lambda: store.resolve(letter_id, owner=owner)):
            # Our lease ran out mid-replay and another replayer took the letter over: the
            # handler may run again there (at least once), and the letter is theirs now.
            replay_logger.warning(
                "replay of dead letter %s succeeded after its %ss lease ran out; "
                "another replay holds it now and may run %s again",
                letter_id,
                lease,
                handler.name,
            )
        if result.outcome is Outcome.DUPLICATE:
            replay_logger.info(
                "dead letter %s resolved without running %s: its inbox holds envelope %s, "
                "whose effects were committed before",
                letter_id,
                handler.name,
                envelope.id,
            )
            return ReplayResult(letter_id, handler.name, "already_handled", 0)
        return ReplayResult(letter_id, handler.name, "replayed", result.attempts)
    error = result.error
    assert error is not None
    updated = letter.failed_again(error, attempts=result.attempts)
    await run(lambda: store.release(letter_id, owner=owner, updated=updated))
    return ReplayResult(
        letter_id,
        handler.name,
        "failed",
        result.attempts,
        f"{updated.error_type}: {updated.message}",
    )


def _check_replayable(letter: DeadLetter) -> None:
    """Letters the bus wrote for bytes no handler took: say so, and what can be done."""
    if not letter.handler.startswith("@"):  # handler names cannot start with '@'
        return
    what = (
        "a message the broker refused for good"
        if letter.handler == FORWARD
        else "a message the worker could not hand to any handler"
    )
    raise DeadLetterNotReplayableError(
        f"dead letter {letter.id} ({letter.handler}) holds {what} ({letter.error_type}: "
        f"{bounded(letter.message, 300)}); no handler can take it, so it cannot be "
        f"replayed. What can be done: look at it (eventbus dlq show {letter.id}), "
        f"export its raw bytes to fix them and publish them again (eventbus dlq export "
        f"{letter.id} --raw > message.bin), or purge it (eventbus dlq purge {letter.id})"
    )


def _handler_of(context: Context, name: str, letter_id: uuid.UUID) -> Handler:
    handler = context.handlers.get(name)
    if handler is None:
        raise ConfigurationError(
            f"dead letter {letter_id} belongs to handler {name!r}, which is not "
            "subscribed to this bus; subscribe it (with that name) before replaying"
        )
    return handler


def _check_takes(handler: Handler, envelope: Envelope, letter_id: uuid.UUID) -> None:
    if not isinstance(envelope.event, handler.event_types):
        raise ConfigurationError(
            f"dead letter {letter_id} holds a {envelope.name!r} event, which handler "
            f"{handler.name!r} does not take any more (it takes "
            f"{' | '.join(t.__qualname__ for t in handler.event_types)}); the name was "
            "reused for another handler: subscribe the old one under its name to replay"
        )
