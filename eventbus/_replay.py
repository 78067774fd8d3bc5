"""Replaying a dead letter: run its handler again through the normal pipeline."""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Literal

import attrs

from ._delivery import Outcome, attempt
from ._redact import masked_logger
from .errors import ConfigurationError, ReplayInProgressError

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._envelope import Envelope
    from ._handlers import Handler

__all__ = ["ReplayResult", "replay_letter"]

logger = masked_logger("eventbus.replay")


@attrs.frozen
class ReplayResult:
    """What one replay did: ``"replayed"`` (the letter is gone) or ``"failed"`` (it stays)."""

    letter_id: uuid.UUID
    handler: str
    outcome: Literal["replayed", "failed"]
    attempts: int
    error: str | None = None
    """The new error, ``Type: message``, when the replay failed."""

    @property
    def ok(self) -> bool:
        return self.outcome == "replayed"


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
        handler = _handler_of(bus, letter.handler, letter_id)
        envelope = letter.envelope(bus.codec)
        _check_takes(handler, envelope, letter_id)
    except BaseException:
        await run(lambda: store.release(letter_id, owner=owner))
        raise
    result = await attempt(bus, handler, envelope)
    if result.outcome in (Outcome.HANDLED, Outcome.SKIPPED):
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
