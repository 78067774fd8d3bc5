"""Replaying a dead letter: run its handler again through the normal pipeline.

A replay takes the same per-handler step as the first delivery (``run_handler``): a
handler that takes a connection or session runs in a transaction of its own, with its
inbox mark, so its effects and the mark commit together. The mark is honoured: when the
inbox holds it, the handler's effects for that envelope were committed already (by a
redelivery, or by an earlier replay whose letter could not be resolved), so the replay
runs nothing and resolves the letter as ``already_handled``. (A dead-lettered handler
never gets the mark: it is written only with the effects.) Handlers without a connection
have no such mark (they run at least once) and are always run.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Literal

import attrs

from ._delivery import Outcome, attempt
from ._redact import bounded, masked_logger
from .errors import ConfigurationError, DeadLetterNotReplayableError, ReplayInProgressError

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._envelope import Envelope
    from ._handlers import Handler
    from .deadletters import DeadLetter

__all__ = ["ReplayResult", "replay_letter"]

logger = masked_logger("eventbus.replay")


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


async def replay_letter(bus: EventBus, letter_id: uuid.UUID, *, lease: float) -> ReplayResult:
    """Claim the letter, run its handler, then resolve it or store the new failure."""
    store = bus.dead_letters
    run = bus._runtime.run_sync
    owner = _owner()
    letter = await run(lambda: store.claim(letter_id, owner=owner, lease=lease))
    if letter is None:
        raise ReplayInProgressError(
            f"dead letter {letter_id} is being replayed by someone else right now; "
            "its handler is not run twice"
        )
    try:
        _check_replayable(letter)
        handler = _handler_of(bus, letter.handler, letter_id)
        envelope = letter.envelope(bus.codec)
        _check_takes(handler, envelope, letter_id)
    except BaseException:
        await run(lambda: store.release(letter_id, owner=owner))
        raise
    result = await attempt(bus, handler, envelope)
    if result.outcome in (Outcome.HANDLED, Outcome.SKIPPED, Outcome.DUPLICATE):
        if not await run(lambda: store.resolve(letter_id, owner=owner)):
            # Our lease ran out mid-replay and another replayer took the letter over: the
            # handler may run again there (at least once), and the letter is theirs now.
            logger.warning(
                "replay of dead letter %s succeeded after its %ss lease ran out; "
                "another replay holds it now and may run %s again",
                letter_id,
                lease,
                handler.name,
            )
        if result.outcome is Outcome.DUPLICATE:
            logger.info(
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
        if letter.handler == "@transport"
        else "a message the worker could not hand to any handler"
    )
    raise DeadLetterNotReplayableError(
        f"dead letter {letter.id} ({letter.handler}) holds {what} ({letter.error_type}: "
        f"{bounded(letter.message, 300)}); no handler can take it, so it cannot be "
        f"replayed. What can be done: look at it (eventbus dlq show {letter.id}), "
        f"export its raw bytes to fix them and publish them again (eventbus dlq export "
        f"{letter.id} --raw > message.bin), or purge it (eventbus dlq purge {letter.id})"
    )


def _handler_of(bus: EventBus, name: str, letter_id: uuid.UUID) -> Handler:
    handler = bus._handlers.get(name)
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
